# Stand-in for python:3.11-slim where no image registry can be reached: Debian bookworm's Python 3.11
# and pip, laid out like the official image (python and pip on PATH, pip installs system-wide as root).
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip python3-venv python-is-python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* /usr/lib/python3*/EXTERNALLY-MANAGED \
    && ln -s /usr/bin/pip3 /usr/local/bin/pip
LABEL org.fedmq.standin="python:3.11-slim"
ENV LANG=C.UTF-8
CMD ["python3"]

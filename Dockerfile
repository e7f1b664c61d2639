# The fedmq image: every fedmq command, e.g. `docker run --rm fedmq:latest aggregator --help`.
#
#   docker build -t fedmq:latest .                         # CPU PyTorch (the default)
#   docker build -t fedmq:cuda \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .    # CUDA PyTorch
#   docker build -t fedmq:latest --network host \
#       --build-arg WHEELS=http://127.0.0.1:8000/ .        # offline: every wheel from a local folder (deploy/compose-test.sh)
#
# CPU by default: torch and torchvision come first, from PyTorch's CPU index
#   pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu
# (a few hundred MB, where PyPI's default Linux build pulls gigabytes of CUDA libraries). Their
# version 2.14.1+cpu is constraints.txt's pin and within pyproject.toml's range, so `pip install .` keeps them.
#
# CUDA variant: set TORCH_INDEX_URL to the CUDA index that pytorch.org lists for torch 2.14.1
# (cu128 above is an example). The CUDA wheels carry their own CUDA libraries, so the slim base
# still works; the host needs the NVIDIA driver and container toolkit (`docker run --gpus all`,
# compose `gpus: all`) and silos run with FEDMQ_CLIENT_DEVICE=cuda. BASE_IMAGE swaps the base for
# one a site prefers (it must have Python 3.11+ and pip).
#
# WHEELS: a folder URL (pip --find-links) that holds every wheel the image needs, torch's included; pip then
# uses no index at all. The build must reach it: `--network host` for a server on the host's 127.0.0.1.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG WHEELS=

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# First and alone in its layer: the largest and slowest step, cached across every change to fedmq's sources.
RUN pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" --index-url "${TORCH_INDEX_URL}" \
        ${WHEELS:+--no-index --find-links "$WHEELS"}

# Not root. /state is where compose mounts the checkpoints: a new named volume takes its owner from here.
RUN useradd --create-home --uid 1000 fedmq \
    && mkdir -p /state \
    && chown fedmq:fedmq /state

# The repository root is the fedmq package (pyproject.toml, setup.py); .dockerignore keeps out the rest.
COPY . /src
# [all]: the PostgreSQL driver, embedded broker, plots and DP accounting, so one image serves every role.
# constraints.txt's pins keep the torch installed above.
RUN pip install "/src[all]" -c /src/constraints.txt ${WHEELS:+--no-index --find-links "$WHEELS"} \
    && rm -rf /src

USER fedmq
WORKDIR /home/fedmq

ENTRYPOINT ["fedmq"]
CMD ["--help"]

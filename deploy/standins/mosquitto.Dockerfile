# Stand-in for eclipse-mosquitto:2 where no image registry can be reached: Debian bookworm's Mosquitto 2
# laid out like the official image (config at /mosquitto/config/mosquitto.conf, the mosquitto user is
# uid/gid 1883, mosquitto_sub for health checks).
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends mosquitto mosquitto-clients \
    && rm -rf /var/lib/apt/lists/* \
    && groupmod -g 1883 mosquitto && usermod -u 1883 -g 1883 mosquitto \
    && mkdir -p /mosquitto/config /mosquitto/data /mosquitto/log \
    && chown -R mosquitto:mosquitto /mosquitto
LABEL org.fedmq.standin="eclipse-mosquitto:2"
EXPOSE 1883
# Started as root like the official image; Mosquitto drops to the mosquitto user itself.
CMD ["/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]

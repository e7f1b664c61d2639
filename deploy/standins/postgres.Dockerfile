# Stand-in for postgres:15 where no image registry can be reached: Debian bookworm's PostgreSQL 15 with
# the part of the official image's entrypoint fedmq's compose file uses: POSTGRES_USER, POSTGRES_DB,
# POSTGRES_PASSWORD_FILE (or POSTGRES_PASSWORD), data in PGDATA (/var/lib/postgresql/data), scram logins
# from the network, pg_isready for health checks.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-common \
    && sed -ri 's/#(create_main_cluster) .*$/\1 = false/' /etc/postgresql-common/createcluster.conf \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
LABEL org.fedmq.standin="postgres:15"
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]

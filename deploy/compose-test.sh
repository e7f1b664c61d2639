#!/usr/bin/env bash
# Run docker-compose.yml for real: broker, PostgreSQL, the aggregator and three silos in containers; a job
# completed, its aggregator killed mid-job and resumed. Opt-in (minutes, needs root or the docker group):
#
#   bash deploy/compose-test.sh
#
# 1. makes sure a Docker daemon runs: installs docker.io (and Compose) with apt-get when missing, starts
#    dockerd in the background when none answers;
# 2. base images: python:3.11-slim, eclipse-mosquitto:2 and postgres:15 are used as they are when present or
#    pullable; where no registry answers, stand-ins with those names are built from Debian's packages
#    (deploy/standins/, on a Debian rootfs made with debootstrap and `docker import`);
# 3. builds fedmq:latest from the repository's Dockerfile; where PyTorch's index cannot be reached, every wheel
#    (the pinned torch included) is first downloaded with this machine's pip into a cache and served to the
#    build on 127.0.0.1 (--build-arg WHEELS): the build itself reaches no index;
# 4. makes the secrets (deploy/compose_secrets.py: broker logins and ACL, the database password) and runs
#    `compose up`: the job trains ROUNDS rounds on synthetic data;
# 5. once KILL_AFTER rounds are in the store, kills the aggregator (SIGKILL) and brings it up again: it must
#    resume the same job from PostgreSQL and the checkpoint volume;
# 6. checks with `fedmq history` in a container against the PostgreSQL service: every round completed once,
#    with all three silos; then `compose down -v` must leave no container, volume or network behind.
#
# Prints the job's history and the image sizes; exits non-zero on any failed check (with the services' logs).
# Settings: ROUNDS (8), KILL_AFTER (2), JOB_TIMEOUT seconds (900), FEDMQ_COMPOSE_CACHE (/var/cache/fedmq-compose-test:
# the rootfs, the wheels), COMPOSE_PROJECT (fedmq-compose-test), WHEELS_PORT (38517).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${FEDMQ_COMPOSE_CACHE:-/var/cache/fedmq-compose-test}
PROJECT=${COMPOSE_PROJECT:-fedmq-compose-test}
ROUNDS=${ROUNDS:-8}
KILL_AFTER=${KILL_AFTER:-2}
JOB_TIMEOUT=${JOB_TIMEOUT:-900}
JOB=default
SILOS=(silo-0 silo-1 silo-2)
STANDINS="$ROOT/deploy/standins"
RUN_DIR=$(mktemp -d /tmp/fedmq-compose-test.XXXXXX)
WHEEL_SERVER_PID=
WHEELS_URL=
POSTGRES_ID=
WHEELS_PORT=${WHEELS_PORT:-38517}
COMPOSE=()
BUILD_SECONDS=-
JOB_SECONDS=-

step() { printf '\n== [%4ds] %s\n' "$SECONDS" "$*"; }
die() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
compose() { "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/docker-compose.yml" "$@"; }
project_leftovers() {
    local label="label=com.docker.compose.project=$PROJECT"
    docker ps -aq --filter "$label"; docker volume ls -q --filter "$label"; docker network ls -q --filter "$label"
}

cleanup() {
    local rc=$?
    if [ -n "$WHEEL_SERVER_PID" ]; then kill "$WHEEL_SERVER_PID" 2>/dev/null || true; fi
    if [ "$rc" -ne 0 ] && [ ${#COMPOSE[@]} -gt 0 ]; then
        echo "-- the services' last log lines" >&2
        compose logs --no-color --tail 40 >&2 2>/dev/null || true
    fi
    if [ ${#COMPOSE[@]} -gt 0 ] && [ -n "$(project_leftovers 2>/dev/null)" ]; then
        compose down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    rm -rf "$RUN_DIR"
    [ "$rc" -eq 0 ] || echo "compose test failed (exit $rc); the lines above say where" >&2
}
trap cleanup EXIT

# -- 1. a Docker daemon and Compose ----------------------------------------------------------------------
apt_install() {
    [ "$(id -u)" = 0 ] || die "need $* but not root: install it (apt-get install $*) and run this again"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; } \
        || die "apt-get install $* failed"
}

ensure_docker() {
    step "Docker daemon"
    command -v docker >/dev/null && command -v dockerd >/dev/null || apt_install docker.io
    if ! docker info >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || die "no Docker daemon answers and this is not root: start dockerd, or join the docker group"
        mkdir -p "$CACHE"
        echo "starting dockerd (log: $CACHE/dockerd.log)"
        setsid nohup dockerd >"$CACHE/dockerd.log" 2>&1 < /dev/null &
        for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
        docker info >/dev/null 2>&1 || die "dockerd did not come up in 60 s: see $CACHE/dockerd.log"
    fi
    if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose)
    elif command -v docker-compose >/dev/null; then COMPOSE=(docker-compose)
    else apt_install docker-compose; COMPOSE=(docker-compose)
    fi
    echo "daemon $(docker version -f '{{.Server.Version}}'), $("${COMPOSE[@]}" version --short 2>/dev/null || "${COMPOSE[@]}" version | head -1)"
}

# -- 2. base images ---------------------------------------------------------------------------------------
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
pulled() { timeout 60 docker pull -q "$1" >/dev/null 2>&1; }

ensure_debian() {  # [TAG]: debian:bookworm-slim, pulled, or made from Debian's mirror
    local tag=${1:-debian:bookworm-slim} rootfs="$CACHE/rootfs"
    have_image "$tag" || pulled "$tag" && return 0
    echo "no registry: $tag from Debian's mirror with debootstrap (a few minutes, once)"
    command -v debootstrap >/dev/null || apt_install debootstrap
    if [ ! -f "$rootfs/.complete" ]; then
        rm -rf "$rootfs"
        debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 \
            || die "debootstrap failed: see $CACHE/debootstrap.log"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        touch "$rootfs/.complete"
    fi
    tar --exclude=./.complete -C "$rootfs" -c . | docker import -c 'CMD ["bash"]' - "$tag" >/dev/null
}

ensure_base_image() {  # TAG STANDIN_DOCKERFILE
    local tag=$1 dockerfile=$2
    local standin
    standin=$(docker image inspect -f '{{index .Config.Labels "org.fedmq.standin"}}' "$tag" 2>/dev/null || true)
    if have_image "$tag" && [ -z "$standin" ]; then echo "$tag: present"; return; fi
    if [ -z "$standin" ] && pulled "$tag"; then echo "$tag: pulled"; return; fi
    ensure_debian
    # A stand-in is built again each time: from the cache in seconds, unless its Dockerfile changed.
    echo "$tag: ${standin:+present, }a stand-in built from Debian's packages (deploy/standins/$dockerfile)"
    docker build -q --network host -t "$tag" -f "$STANDINS/$dockerfile" "$STANDINS" >"$RUN_DIR/standin.log" 2>&1 \
        || { tail -20 "$RUN_DIR/standin.log" >&2; die "building the $tag stand-in failed (deploy/standins/$dockerfile)"; }
}

# -- 3. fedmq's image -------------------------------------------------------------------------------------
serve_wheels() {  # sets WHEELS_URL for the Dockerfile's WHEELS, or leaves it empty when PyTorch's index answers
    WHEELS_URL=
    if curl -fsS -m 10 -o /dev/null https://download.pytorch.org/whl/cpu/torch/ 2>/dev/null; then return; fi
    local wheels="$CACHE/wheels" stamp port
    echo "PyTorch's index does not answer: the wheels from this machine's pip, served on 127.0.0.1"
    mkdir -p "$wheels"
    # The wheel set follows from the pins and the declared dependencies: download again only when they change.
    stamp=$(python3 -c 'import json, sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(json.dumps([p["dependencies"], p["optional-dependencies"], open(sys.argv[2]).read()]))' \
        "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$wheels/.stamp" 2>/dev/null)" != "$stamp" ]; then
        # torch's pin from constraints.txt; pip's own configuration says where it lies (here: a local mirror).
        python3 -m pip download -q --dest "$wheels" --only-binary=:all: -c "$ROOT/constraints.txt" \
            torch torchvision "setuptools>=77" "$ROOT[all]" >"$RUN_DIR/pip-download.log" 2>&1 \
            || { tail -20 "$RUN_DIR/pip-download.log" >&2; die "pip download of the image's wheels failed"; }
        echo "$stamp" > "$wheels/.stamp"
    fi
    # Always the same port where it is free: the URL is a build argument, part of the layers' cache key.
    port=$WHEELS_PORT
    python3 -c "import socket; socket.socket().bind(('127.0.0.1', $port))" 2>/dev/null || port=$(free_port)
    python3 -m http.server --bind 127.0.0.1 --directory "$wheels" "$port" >/dev/null 2>&1 &
    WHEEL_SERVER_PID=$!
    for _ in $(seq 50); do curl -fs -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
    WHEELS_URL="http://127.0.0.1:$port/"
}

build_fedmq() {
    step "fedmq:latest from the Dockerfile"
    local started=$SECONDS
    serve_wheels
    docker build --network host -t fedmq:latest ${WHEELS_URL:+--build-arg "WHEELS=$WHEELS_URL"} "$ROOT" \
        > "$RUN_DIR/build.log" 2>&1 || { tail -30 "$RUN_DIR/build.log" >&2; die "docker build failed"; }
    BUILD_SECONDS=$((SECONDS - started))
    echo "built in ${BUILD_SECONDS}s ($(grep -c 'Using cache' "$RUN_DIR/build.log" || true) steps from the cache)"
    if [ -n "$WHEEL_SERVER_PID" ]; then kill "$WHEEL_SERVER_PID"; WHEEL_SERVER_PID=; fi
}

# -- 4.-6. the job ---------------------------------------------------------------------------------------
make_secrets() {
    step "secrets: broker logins and ACL, the database password (deploy/compose_secrets.py)"
    docker run --rm --network none --user root --entrypoint python \
        -v "$ROOT/deploy:/deploy:ro" -v "$SECRETS_DIR:/secrets" fedmq:latest \
        /deploy/compose_secrets.py /secrets --silos "$(IFS=,; echo "${SILOS[*]}")" --fedmq-uid 1000 --mosquitto-uid 1883
}

history_json() { compose run --rm --no-deps -T aggregator history --job "$JOB" --json 2>/dev/null; }
store_query() {  # SQL: through PostgreSQL's own client in its container (docker exec: compose exec is slower)
    docker exec "$POSTGRES_ID" psql -qtA -U fedmq -d fedmq -c "$1" 2>/dev/null | tr -d '[:space:]'
}
completed_rounds() {
    store_query "select count(*) from rounds r join jobs j on j.id = r.job_id where j.name = '$JOB' and r.status = 'completed'"
}
container_of() { compose ps -q "$1"; }
exit_code() { docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$1"; }

wait_rounds() {  # N DEADLINE_SECONDS: until N rounds are completed, failing if the aggregator stops first
    local want=$1 deadline=$((SECONDS + $2)) done=0 state aggregator
    aggregator=$(container_of aggregator)
    while [ "$SECONDS" -lt "$deadline" ]; do
        done=$(completed_rounds || true); done=${done:-0}
        [ "$done" -ge "$want" ] && { echo "$done"; return; }
        state=$(exit_code "$aggregator")
        [ "${state%% *}" = exited ] && die "the aggregator stopped ($state) after $done round(s), before round $want"
        sleep 0.5
    done
    die "$done of $want rounds completed in $2 s"
}

wait_exit() {  # SERVICE DEADLINE_SECONDS: until its container exits 0
    local id deadline=$((SECONDS + $2)) state
    id=$(container_of "$1")
    while [ "$SECONDS" -lt "$deadline" ]; do
        state=$(exit_code "$id")
        case "$state" in
            "exited 0") return ;;
            exited*) die "$1 exited with ${state#exited }" ;;
        esac
        sleep 1
    done
    die "$1 still running after $2 s"
}

run_job() {
    step "compose up: broker, postgres, synth, aggregator, ${#SILOS[@]} silos; $ROUNDS rounds"
    local started=$SECONDS killed_at resumed
    compose up -d --no-build >/dev/null 2>&1 || { compose up -d --no-build; die "compose up failed"; }
    POSTGRES_ID=$(container_of postgres)
    killed_at=$(wait_rounds "$KILL_AFTER" "$JOB_TIMEOUT")
    [ "$killed_at" -lt "$ROUNDS" ] || die "the job finished before it could be killed: raise ROUNDS"
    step "killing the aggregator after round $killed_at of $ROUNDS (SIGKILL), then compose up again"
    docker kill "$(container_of aggregator)" >/dev/null
    killed_at=$(completed_rounds)
    compose up -d --no-build aggregator >/dev/null 2>&1 || die "compose up aggregator failed"
    wait_exit aggregator "$JOB_TIMEOUT"
    for silo in "${SILOS[@]}"; do wait_exit "$silo" 120; done
    JOB_SECONDS=$((SECONDS - started))
    resumed=$(compose logs --no-color aggregator | grep -c "resuming job '$JOB' after round $killed_at (from /state/checkpoints" || true)
    [ "$resumed" -ge 1 ] || die "the restarted aggregator did not resume after round $killed_at from its checkpoint"
    echo "resumed after round $killed_at from the checkpoint volume; every service exited 0 (${JOB_SECONDS}s)"
}

check_history() {
    step "fedmq history, in a container, against the PostgreSQL service"
    compose run --rm --no-deps -T aggregator history --job "$JOB" || die "fedmq history failed"
    history_json > "$RUN_DIR/history.json" || die "fedmq history --json failed"
    python3 - "$RUN_DIR/history.json" "$ROUNDS" "${SILOS[@]}" <<'EOF' || die "the history is not what the job should have left"
import json, sys
rounds, want, silos = json.load(open(sys.argv[1])), int(sys.argv[2]), sorted(sys.argv[3:])
numbers = [r["round"] for r in rounds]
problems = []
if numbers != list(range(1, want + 1)):
    problems.append(f"rounds {numbers}, expected 1..{want} once each")
for r in rounds:
    if r["status"] != "completed" or r["clients"] != silos:
        problems.append(f"round {r['round']}: {r['status']} with {r['clients']}")
# The model learned: the silos' evaluation loss fell from the first round to the last.
first, last = (rounds[i]["metrics"].get("loss", float("nan")) for i in (0, -1)) if rounds else (0, 0)
if not last < first:
    problems.append(f"evaluation loss {first} after round 1, {last} after round {want}: the model did not learn")
print("\n".join(problems) or f"every round 1..{want} completed once, each with {', '.join(silos)}; "
      f"evaluation loss {first:.4f} -> {last:.4f}")
sys.exit(1 if problems else 0)
EOF
    local doubled
    doubled=$(store_query "select count(*) from (select job_id, number from rounds group by job_id, number having count(*) > 1) d")
    [ "$doubled" = 0 ] || die "$doubled round number(s) recorded twice in the store"
}

tear_down() {
    step "compose down -v"
    compose down -v --remove-orphans >/dev/null 2>&1 || die "compose down -v failed"
    local left
    left=$(project_leftovers)
    [ -z "$left" ] || die "left behind after down -v: $left"
    echo "no container, volume or network of project $PROJECT left"
}

main() {
    ensure_docker
    step "base images"
    ensure_base_image python:3.11-slim python.Dockerfile
    ensure_base_image eclipse-mosquitto:2 mosquitto.Dockerfile
    ensure_base_image postgres:15 postgres.Dockerfile
    build_fedmq
    [ -z "$(project_leftovers)" ] || compose down -v --remove-orphans >/dev/null 2>&1  # a run killed earlier
    export DATA_DIR="$RUN_DIR/data" SECRETS_DIR="$RUN_DIR/secrets" ROUNDS
    BROKER_PORT=$(free_port); export BROKER_PORT
    mkdir -p "$DATA_DIR" "$SECRETS_DIR"
    make_secrets
    run_job
    check_history
    tear_down
    step "image sizes"
    docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E '^(fedmq:latest|python:3.11-slim|eclipse-mosquitto:2|postgres:15|debian:bookworm-slim) '
    printf '\nPASSED in %ds: fedmq image build %ss, job (%s rounds, with the kill and resume) %ss\n' \
        "$SECONDS" "$BUILD_SECONDS" "$ROUNDS" "$JOB_SECONDS"
}

# Sourced (say, to call one step alone), it only defines the steps.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi

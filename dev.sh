#!/usr/bin/env bash
# Set up this checkout once and run the demo or the tests:   ./dev.sh demo [OPTIONS]   |   ./dev.sh test [PYTEST ARGS]
#   demo: .venv with the pinned PyTorch (constraints.txt) and the project with every optional part;
#   test: the same, plus what the tests require, installed with apt where missing and started where
#         not running: Mosquitto, RabbitMQ and NATS (the tests start private instances on free ports),
#         PostgreSQL on 127.0.0.1:5432 with trust logins and a database `test`, Chromium and its
#         driver (tests/dashboard), and the real Fashion-MNIST (examples/fashion_mnist). A service
#         that is missing fails its tests; none skips itself.
set -euo pipefail
cd "$(dirname "$0")"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

setup_venv() {
    local stamp=.venv/.fedmq-installed want
    want=$(cat pyproject.toml setup.py constraints.txt | sha256sum | cut -c1-16)
    if [ -x .venv/bin/fedmq ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
    echo "setting up .venv (PyTorch comes from this machine's disk; a few minutes the first time) ..." >&2
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    # torch/torchvision first and pinned (constraints.txt), so no resolver reaches for another build.
    .venv/bin/pip install -q -c constraints.txt torch torchvision
    # dev = every optional part (PostgreSQL, embedded broker, plots, DP accounting, dashboard) and the test tools.
    # A metadata folder left by an older install would hide the plug-ins' entry points: make it anew.
    rm -rf fedmq.egg-info
    .venv/bin/pip install -q -c constraints.txt -e '.[dev]'
    echo "$want" > "$stamp"
}

apt_install() {  # the packages of "$@" that are not installed yet
    local missing=() pkg
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    [ ${#missing[@]} = 0 ] && return
    echo "installing ${missing[*]} (the tests need them) ..." >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

wait_for_port() {  # port, what
    local i
    for i in $(seq 60); do port_answers "$1" && return; sleep 1; done
    echo "error: $2 does not answer on 127.0.0.1:$1 after 60 s" >&2
    exit 1
}

setup_postgresql() {
    [ -n "${FEDMQ_TEST_POSTGRES:-}" ] && return  # the tests use that admin URL instead
    command -v psql >/dev/null || apt_install postgresql-client
    if ! port_answers 5432; then
        if ! command -v pg_lsclusters >/dev/null; then
            apt_install postgresql
            # A fresh server: trust logins from this machine, as the tests' admin URL expects.
            local hba
            hba=$(ls /etc/postgresql/*/main/pg_hba.conf | head -1)
            as_root sed -i -E 's/^(local|host)(\s+all\s+all\s+.*)(peer|scram-sha-256|md5)$/\1\2trust/' "$hba"
        fi
        echo "starting PostgreSQL ..." >&2
        as_root service postgresql start >/dev/null
        wait_for_port 5432 PostgreSQL
    fi
    if ! psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
        psql -h 127.0.0.1 -U postgres -d postgres -qc 'CREATE DATABASE test' || {
            echo "error: cannot log in to PostgreSQL on 127.0.0.1:5432 as postgres without a password" >&2
            echo "hint: allow it with 'host all all 127.0.0.1/32 trust' in pg_hba.conf, or set \$FEDMQ_TEST_POSTGRES to an admin URL" >&2
            exit 1
        }
    fi
}

setup_test_services() {
    apt_install mosquitto rabbitmq-server nats-server chromium chromium-driver fonts-liberation dataset-fashion-mnist
    setup_postgresql
}

case "${1:-}" in
    demo) shift; setup_venv; exec .venv/bin/fedmq demo "$@" ;;
    # Every core (-n auto; a later -n 0 runs in one process). loadgroup hands a worker its next test when it
    # has 2 left (xdist's default, load, hands out long runs of tests, and one core may end up alone).
    test) shift; setup_venv; setup_test_services; exec .venv/bin/python -m pytest -n auto --dist loadgroup "$@" ;;
    *) echo "usage: ./dev.sh demo [OPTIONS] | ./dev.sh test [PYTEST ARGS]" >&2; exit 2 ;;
esac

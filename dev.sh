#!/usr/bin/env bash
# Set up this checkout once (.venv with the pinned PyTorch, the project, its test tools; Mosquitto
# for the tests) and run the demo or the tests:   ./dev.sh demo [OPTIONS]   |   ./dev.sh test [PYTEST ARGS]
set -euo pipefail
cd "$(dirname "$0")"

setup_venv() {
    local stamp=.venv/.fedmq-installed want
    want=$(cat pyproject.toml setup.py constraints.txt | sha256sum | cut -c1-16)
    if [ -x .venv/bin/fedmq ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
    echo "setting up .venv (PyTorch comes from this machine's disk; a few minutes the first time) ..." >&2
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    # torch/torchvision first and pinned (constraints.txt), so no resolver reaches for another build.
    .venv/bin/pip install -q -c constraints.txt torch torchvision
    # dev = every optional part (PostgreSQL, embedded broker, plots, DP accounting) and the test tools.
    .venv/bin/pip install -q -c constraints.txt -e '.[dev]'
    echo "$want" > "$stamp"
}

setup_mosquitto() {
    if command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; then return; fi
    echo "installing mosquitto (the tests start their own brokers with it) ..." >&2
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq mosquitto >/dev/null; fi
}

case "${1:-}" in
    demo) shift; setup_venv; exec .venv/bin/fedmq demo "$@" ;;
    # Every core (-n auto; a later -n 0 runs in one process). loadgroup hands a worker its next test when it
    # has 2 left (xdist's default, load, hands out long runs of tests, and one core may end up alone).
    test) shift; setup_venv; setup_mosquitto; exec .venv/bin/python -m pytest -n auto --dist loadgroup "$@" ;;
    *) echo "usage: ./dev.sh demo [OPTIONS] | ./dev.sh test [PYTEST ARGS]" >&2; exit 2 ;;
esac

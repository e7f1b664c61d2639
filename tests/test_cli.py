"""Bad input at the command line: one clear line and a hint, a non-zero exit, never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

from fedmq.broker.server import free_port


def _clear_error(result, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") or "Error: " in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_client_with_a_missing_data_folder(fedmq, tmp_path: Path) -> None:
    result = fedmq.run("client", "--silo", "a", "--data", str(tmp_path / "nope"))
    _clear_error(result, "does not exist", "hint:")


def test_client_with_an_empty_data_folder(fedmq, tmp_path: Path) -> None:
    result = fedmq.run("client", "--silo", "a", "--data", str(tmp_path))
    _clear_error(result, "holds no built-in task's data", "--task module:Class")


def test_client_with_an_unreachable_broker(fedmq, tmp_path: Path) -> None:
    data = tmp_path / "D"
    assert fedmq.run("data", "synth", "--silos", "1", "--out", str(data)).returncode == 0
    port = free_port()
    result = fedmq.run("client", "--silo", "a", "--data", str(data / "0"), "--broker", f"mqtt://127.0.0.1:{port}",
                       "--connect-timeout", "1", "--work-dir", str(tmp_path / "w"))
    _clear_error(result, "cannot reach the MQTT broker", "hint:")


def test_broker_on_a_port_in_use(fedmq) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = fedmq.run("broker", "--port", str(port))
    _clear_error(result, f"cannot listen on 127.0.0.1:{port}", "hint:")


def test_invalid_names_and_urls(fedmq, tmp_path: Path) -> None:
    _clear_error(fedmq.run("client", "--silo", "a/b", "--data", str(tmp_path)), "invalid silo name")
    _clear_error(fedmq.run("aggregator", "--job", "x+y"), "invalid job name")
    _clear_error(fedmq.run("aggregator", "--broker", "http://x", "--db", f"sqlite:///{tmp_path}/f.db"),
                 "unsupported broker URL scheme")
    _clear_error(fedmq.run("aggregator", "--model", "vgg"), "unknown model 'vgg'")


def test_history_without_a_store(fedmq, tmp_path: Path) -> None:
    _clear_error(fedmq.run("history", "--db", f"sqlite:///{tmp_path}/none.db"), "no store at", "hint:")


def test_synth_refuses_to_overwrite(fedmq, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    _clear_error(fedmq.run("data", "synth", "--silos", "1", "--out", str(tmp_path)), "not empty")
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_max_samples_per_silo_must_be_a_positive_count(tmp_path: Path, monkeypatch) -> None:
    """From the flag, its variable or the config file alike: click's one-line error, exit 2, nothing started."""
    from click.testing import CliRunner
    from fedmq.cli import cli

    for var in ("FEDMQ_AGGREGATOR_MAX_SAMPLES_PER_SILO", "FEDMQ_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    config = tmp_path / "fedmq.toml"
    config.write_text("[aggregator]\nmax-samples-per-silo = 0\n")
    runner = CliRunner()
    flag = "Invalid value for '--max-samples-per-silo'"
    for args, env, needle in ([["aggregator", "--max-samples-per-silo", "0"], {}, flag],
                              [["aggregator"], {"FEDMQ_AGGREGATOR_MAX_SAMPLES_PER_SILO": "-3"}, flag],
                              [["aggregator", "--max-samples-per-silo", "lots"], {}, flag],
                              [["--config", str(config), "aggregator"], {},
                               "max-samples-per-silo in [aggregator]: 0 is not in the range x>=1"]):
        result = runner.invoke(cli, args, env=env)
        assert result.exit_code == 2, (args, env, result.output)
        assert needle in result.output and "Traceback" not in result.output, (args, env, result.output)


def test_memory_budget_takes_sizes_and_refuses_nonsense(fedmq) -> None:
    from fedmq.cli import ByteSize

    size = ByteSize()
    assert [size.convert(v, None, None) for v in ("4GiB", "512 MiB", "800MB", "1e9", "1000")] == \
        [4 * 2**30, 512 * 2**20, 800 * 10**6, 10**9, 1000]
    bad = fedmq.run("aggregator", "--memory-budget", "3xb")
    assert bad.returncode == 2 and "'3xb' is not a size (say 4GiB" in bad.stderr, bad.stderr

"""Options from ``--config FILE`` (TOML) and ``FEDMQ_*`` variables: command line > environment > file > defaults.

Precedence is checked through the real command line, on commands whose effective options show in
what they do or say: ``data synth`` (the folders it writes), ``client`` and ``history`` (the path
their error names), ``aggregator`` (the broker its error names).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from fedmq.broker.server import free_port
from fedmq.cli import cli
from fedmq.commands.config_file import iter_commands, known_envvars, load_config, settings, warn_unknown_envvars
from fedmq.errors import ConfigError

SHARED_ENVVARS = {"FEDMQ_BROKER", "FEDMQ_DB", "FEDMQ_CA_FILE", "FEDMQ_SIGNING_KEY"}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FEDMQ_* variable of the machine running the tests may leak into them."""
    for var in [v for v in os.environ if v.startswith("FEDMQ_")]:
        monkeypatch.delenv(var)


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def silo_folders(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def _clean_error(result, code: int, *needles: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert any(line.startswith("error: ") for line in result.stderr.splitlines()), result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


# -- precedence, through the real command line ------------------------------------------------------
def test_synth_options_come_from_file_then_environment_then_flags(fedmq, tmp_path: Path, monkeypatch) -> None:
    config = write(tmp_path / "fedmq.toml", f"""
[data.synth]
silos = 2
out = "{tmp_path / 'from-file'}"
images-per-silo = 4
image_size = 16
""")
    assert fedmq.run("--config", str(config), "data", "synth").returncode == 0
    assert silo_folders(tmp_path / "from-file") == ["0", "1"]

    monkeypatch.setenv("FEDMQ_DATA_SYNTH_SILOS", "3")
    monkeypatch.setenv("FEDMQ_DATA_SYNTH_OUT", str(tmp_path / "from-env"))
    assert fedmq.run("--config", str(config), "data", "synth").returncode == 0
    assert silo_folders(tmp_path / "from-env") == ["0", "1", "2"]

    result = fedmq.run("--config", str(config), "data", "synth", "--silos", "1", "--out", str(tmp_path / "from-flag"))
    assert result.returncode == 0, result.stderr
    assert silo_folders(tmp_path / "from-flag") == ["0"]


def test_aggregator_broker_comes_from_file_then_environment_then_flags(fedmq, tmp_path: Path, monkeypatch) -> None:
    file_port, shared_port, own_port, flag_port = (free_port() for _ in range(4))
    config = write(tmp_path / "fedmq.toml", f"""
[aggregator]
broker = "mqtt://127.0.0.1:{file_port}"
connect-timeout = 0.2
db = "sqlite:///{tmp_path / 'agg.db'}"
out = "{tmp_path / 'out'}"
""")

    def unreachable(port: int, *flags: str) -> None:
        result = fedmq.run("--config", str(config), "aggregator", *flags)
        _clean_error(result, 1, f"cannot reach the MQTT broker at mqtt://127.0.0.1:{port}")

    unreachable(file_port)
    monkeypatch.setenv("FEDMQ_BROKER", f"mqtt://127.0.0.1:{shared_port}")
    unreachable(shared_port)
    monkeypatch.setenv("FEDMQ_AGGREGATOR_BROKER", f"mqtt://127.0.0.1:{own_port}")
    unreachable(own_port)
    unreachable(flag_port, "--broker", f"mqtt://127.0.0.1:{flag_port}")


def test_client_options_come_from_file_then_environment_then_flags(fedmq, tmp_path: Path, monkeypatch) -> None:
    config = write(tmp_path / "fedmq.toml", f"""
[client]
silo = "hospital-a"
data = "{tmp_path / 'file-data'}"
""")
    # --silo is required: the file's value counts; the data folder it names is the one checked
    _clean_error(fedmq.run("--config", str(config), "client"), 2, f"data folder {tmp_path / 'file-data'} does not exist")
    monkeypatch.setenv("FEDMQ_CLIENT_DATA", str(tmp_path / "env-data"))
    _clean_error(fedmq.run("--config", str(config), "client"), 2, f"data folder {tmp_path / 'env-data'} does not exist")
    result = fedmq.run("--config", str(config), "client", "--data", str(tmp_path / "flag-data"))
    _clean_error(result, 2, f"data folder {tmp_path / 'flag-data'} does not exist")


def test_history_db_top_level_table_shared_and_own_variables(fedmq, tmp_path: Path, monkeypatch) -> None:
    """A command's table beats a top-level key; its own variable beats the shared $FEDMQ_DB; a flag beats all."""
    def db(name: str) -> str:
        return f"sqlite:///{tmp_path / name}.db"

    config = write(tmp_path / "fedmq.toml", f"""
db = "{db('top-level')}"
log-file = "{tmp_path / 'fedmq.log'}"
[history]
db = "{db('table')}"
""")
    monkeypatch.setenv("FEDMQ_CONFIG", str(config))  # no --config: the variable names the file
    _clean_error(fedmq.run("history"), 1, f"no store at {db('table')}")
    assert (tmp_path / "fedmq.log").exists()  # the group's own option, from a top-level key

    monkeypatch.setenv("FEDMQ_DB", db("shared-env"))
    _clean_error(fedmq.run("history"), 1, f"no store at {db('shared-env')}")
    monkeypatch.setenv("FEDMQ_HISTORY_DB", db("own-env"))
    _clean_error(fedmq.run("history"), 1, f"no store at {db('own-env')}")
    _clean_error(fedmq.run("history", "--db", db("flag")), 1, f"no store at {db('flag')}")


# -- errors, through the real command line ----------------------------------------------------------
def test_a_missing_config_file(fedmq, tmp_path: Path) -> None:
    _clean_error(fedmq.run("--config", str(tmp_path / "nope.toml"), "history"), 2,
                 f"config file {tmp_path / 'nope.toml'} does not exist", "hint:")


def test_an_unknown_key_names_the_key_and_the_file(fedmq, tmp_path: Path) -> None:
    config = write(tmp_path / "fedmq.toml", "[aggregator]\nround = 50\n")
    _clean_error(fedmq.run("--config", str(config), "history"), 2,
                 f"config file {config}: unknown key 'round' in [aggregator]", "did you mean 'rounds'?")


def test_a_value_of_the_wrong_type(fedmq, tmp_path: Path) -> None:
    config = write(tmp_path / "fedmq.toml", '[aggregator]\nrounds = "fifty"\n')
    _clean_error(fedmq.run("--config", str(config), "aggregator"), 2,
                 f"config file {config}: rounds in [aggregator]: expected an integer", "hint: --rounds")


# -- the loader -------------------------------------------------------------------------------------
def test_a_file_becomes_clicks_default_map(tmp_path: Path) -> None:
    config = write(tmp_path / "fedmq.toml", """
log-level = "DEBUG"
ca-file = "tls/ca.crt"
job = "mnist"
[aggregator]
rounds = 50
min_clients = 3
strategy = "krum"
sign = true
keys = "auth/keys"
[broker]
job = "+"
[data.synth]
silos = 3
""")
    default_map = load_config(config, cli)
    assert default_map["log_level"] == "DEBUG"
    # keys are the long option names, which are also the Python parameter names (click derives variables from them)
    assert default_map["aggregator"] == {"rounds": 50, "min_clients": 3, "strategy": "krum", "sign": True, "keys": "auth/keys",
                                         "ca_file": "tls/ca.crt", "job": "mnist"}
    assert default_map["client"] == default_map["status"] == {"ca_file": "tls/ca.crt", "job": "mnist"}
    assert default_map["broker"] == {"job": "+"}  # its own table wins over the top-level job
    assert default_map["data"]["synth"] == {"silos": 3}


@pytest.mark.parametrize(("text", "needles"), [
    ("[aggregatr]\nrounds = 1\n", ["unknown table [aggregatr]", "did you mean [aggregator]?"]),
    ("[data.synt]\nsilos = 1\n", ["unknown table [data.synt]", "did you mean [data.synth]?"]),
    ("[client]\nsilos = 1\n", ["unknown key 'silos' in [client]", "did you mean 'silo'?"]),
    ("nope = 1\n", ["unknown key 'nope' in the top level"]),
    ("[aggregator]\nrounds = 0\n", ["rounds in [aggregator]", "0 is not in the range x>=1"]),
    ("[aggregator]\nrounds = 2.5\n", ["rounds in [aggregator]: expected an integer, got float 2.5"]),
    ("[aggregator]\nlr = true\n", ["lr in [aggregator]: expected a number"]),
    ("[aggregator]\nsign = \"yes\"\n", ["sign in [aggregator]: expected true or false"]),
    ("[aggregator]\nstrategy = \"best\"\n", ["strategy in [aggregator]", "'best' is not one of"]),
    ("[client]\ndata = 3\n", ["data in [client]: expected a string"]),
    ("silos = 3\n", ["top-level silos does not suit `fedmq broker --silos`", "put it in the table"]),
    ("[aggregator\nrounds = 1\n", ["is not valid TOML", "line 1"]),
])
def test_bad_files_are_config_errors_naming_file_and_key(tmp_path: Path, text: str, needles: list[str]) -> None:
    config = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(config, cli)
    shown = f"{caught.value.message} {caught.value.hint or ''}"
    assert str(config) in shown
    for needle in needles:
        assert needle in shown


def test_paths_are_not_checked_until_their_command_runs(tmp_path: Path) -> None:
    """The aggregator's host loads a file that also names a silo's data folder it does not have."""
    config = write(tmp_path / "fedmq.toml", '[client]\ndata = "/nowhere/silo-a"\nsigning-key = "/nowhere/a.key"\n')
    assert load_config(config, cli)["client"] == {"data": "/nowhere/silo-a", "signing_key": "/nowhere/a.key"}


# -- secrets ----------------------------------------------------------------------------------------
def test_a_readable_file_with_a_broker_password_draws_a_warning(tmp_path: Path, capsys) -> None:
    text = 'broker = "mqtt://silo-a:s3cret@broker.example:1883"\n'
    load_config(write(tmp_path / "open.toml", text, mode=0o644), cli)
    warning = capsys.readouterr().err
    assert "holds a broker password" in warning and "chmod 600" in warning and "$FEDMQ_BROKER" in warning
    assert "s3cret" not in warning

    load_config(write(tmp_path / "private.toml", text, mode=0o600), cli)
    load_config(write(tmp_path / "no-password.toml", 'broker = "mqtt://broker.example:1883"\n', mode=0o644), cli)
    assert capsys.readouterr().err == ""


# -- the environment --------------------------------------------------------------------------------
def test_every_option_has_its_own_variable_and_the_shared_ones_still_work() -> None:
    known = known_envvars(cli)
    assert known["FEDMQ_AGGREGATOR_ROUNDS"] == ["fedmq aggregator --rounds"]
    assert known["FEDMQ_AGGREGATOR_STRATEGY"] == ["fedmq aggregator --strategy"]
    assert known["FEDMQ_DATA_SYNTH_SILOS"] == ["fedmq data synth --silos"]
    assert known["FEDMQ_LOG_LEVEL"] == ["fedmq --log-level"]
    assert known["FEDMQ_CONFIG"] == ["fedmq --config"]
    assert SHARED_ENVVARS <= set(known)
    assert "fedmq aggregator --broker" in known["FEDMQ_BROKER"] and "fedmq client --broker" in known["FEDMQ_BROKER"]
    clashes = {var: options for var, options in known.items() if len(options) > 1 and var not in SHARED_ENVVARS}
    assert clashes == {}


def test_a_misspelt_variable_draws_a_warning(capsys) -> None:
    warn_unknown_envvars(cli, {"FEDMQ_AGGREGATOR_ROUND": "3", "FEDMQ_BROKER": "mqtt://x", "HOME": "/root"})
    err = capsys.readouterr().err
    assert "$FEDMQ_AGGREGATOR_ROUND is set but fedmq reads no such variable" in err
    assert "did you mean $FEDMQ_AGGREGATOR_ROUNDS?" in err
    assert "FEDMQ_BROKER" not in err


def test_a_top_level_broker_is_shared_by_every_command_with_broker(tmp_path: Path) -> None:
    default_map = load_config(write(tmp_path / "fedmq.toml", 'broker = "mqtt://broker.example:1883"\n'), cli)
    with_broker = {name for name, command in cli.commands.items() if "broker" in settings(command)}
    assert {"aggregator", "client", "status"} <= with_broker
    assert default_map == {name: {"broker": "mqtt://broker.example:1883"} for name in with_broker}


@pytest.mark.parametrize("page", ["configuration.md", "deployment.md"])
def test_the_documentations_config_files_load(tmp_path: Path, page: str) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / page).read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    assert blocks
    for i, block in enumerate(blocks):
        assert load_config(write(tmp_path / f"readme-{i}.toml", block), cli)


def test_click_reads_every_variable_by_its_long_flag_and_the_tree_is_left_as_it_was(tmp_path: Path) -> None:
    """click's auto_envvar_prefix names the variables; nothing rewrites the module-level command tree."""
    from click.testing import CliRunner

    before = {(path, name): option.envvar for path, command in iter_commands(cli) for name, option in settings(command).items()}
    runner = CliRunner()
    result = runner.invoke(cli, ["history", "--db", f"sqlite:///{tmp_path / 'x.db'}"], env={"FEDMQ_HISTORY_ROUND": "zero"})
    assert result.exit_code == 2 and "Invalid value for '--round'" in result.output  # --round's parameter is `round`
    result = runner.invoke(cli, ["export", "--db", f"sqlite:///{tmp_path / 'x.db'}"], env={"FEDMQ_EXPORT_OUT": ""})
    assert "Missing option '--out'" in result.output  # an empty variable counts as unset
    after = {(path, name): option.envvar for path, command in iter_commands(cli) for name, option in settings(command).items()}
    assert before == after
    assert all(envvar is None for envvar in after.values())  # own names come from click, shared ones from SharedEnvOption

"""``fedmq``: the command line. Parses options and delegates; no logic of its own.

Every error a user can cause is a ``FedmqError``: it is printed as one line with a hint on the
next, and the process exits non-zero (2 for bad options or data, 1 otherwise), never a traceback.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__
from .commands.config_file import SharedEnvOption, config_option
from .errors import ConfigError, FedmqError
from .schemas import DEFAULT_CHUNK_SIZE, check_name
from .schemas.catalog import MODELS, TASKS, defaults_help
from .schemas.codecs.names import DEFAULT_JOB_CODEC, JOB_CODECS
from .schemas.codecs.names import DESCRIPTIONS as CODEC_HELP
from .stopping import EXIT_STOPPED, StopFlag, Stopped

log = logging.getLogger("fedmq")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class FedmqGroup(click.Group):
    """Turns a FedmqError anywhere below into a clear message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FedmqError as exc:
            click.secho(f"error: {exc.message}", err=True, fg="red")
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            ctx.exit(2 if isinstance(exc, ConfigError) else 1)
        except (KeyboardInterrupt, Stopped):
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_STOPPED)


def _broker_option(f: Any) -> Any:
    from .broker.url import BROKER_ENV, DEFAULT_BROKER

    return click.option("--broker", cls=SharedEnvOption, shared_envvar=BROKER_ENV, default=DEFAULT_BROKER, show_default=True,
                        help=f"MQTT broker URL, mqtt://[user:password@]host:port, mqtts:// for TLS (or ${BROKER_ENV}).")(f)


def _ca_file_option(f: Any) -> Any:
    from .broker.url import CA_FILE_ENV

    return click.option("--ca-file", cls=SharedEnvOption, shared_envvar=CA_FILE_ENV,
                        type=click.Path(path_type=Path, dir_okay=False),
                        help=f"With mqtts://: the CA that signed the broker's certificate, e.g. TLS_DIR/ca.crt "
                             f"(or ${CA_FILE_ENV}); default: the system's CAs.")(f)


def _connect_timeout_option(f: Any) -> Any:
    return click.option("--connect-timeout", default=30.0, show_default=True, type=click.FloatRange(0),
                        help="Seconds to keep trying to reach the broker at start-up.")(f)


def _job_option(f: Any) -> Any:
    return click.option("--job", default="default", show_default=True, callback=_check_job,
                        help="Job name: the topic prefix fedmq/<job>/ and the key in the store.")(f)


def _db_option(f: Any) -> Any:
    from .store import DEFAULT_DB

    return click.option("--db", cls=SharedEnvOption, shared_envvar="FEDMQ_DB", default=DEFAULT_DB, show_default=True,
                        help="SQLAlchemy database URL (or $FEDMQ_DB).")(f)


def _check_job(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else check_name("job", value)


def _check_task(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from .api import check_task_name

    return check_task_name(value)


# auto_envvar_prefix: click reads every option from $FEDMQ_<COMMAND>_<OPTION> (commands/config_file.py).
@click.group(cls=FedmqGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110,
                                               "auto_envvar_prefix": "FEDMQ"})
@click.version_option(__version__, prog_name="fedmq")
@config_option
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Also append the log to this file (stderr still gets it).")
def cli(log_level: str, log_file: Path | None) -> None:
    """Cross-silo federated learning over MQTT: one aggregator, many silos, only a broker between them."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        try:
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot open the log file {log_file}: {exc.strerror}", hint="check the --log-file path") from None
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT, handlers=handlers)
    # Alembic narrates its plug-ins and each migration step at INFO; the store logs what matters itself.
    logging.getLogger("alembic").setLevel(logging.WARNING)


# -- broker ----------------------------------------------------------------------------------------
@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=None, type=click.IntRange(1, 65535), help="[default: 1883, 8883 with --tls-dir]")
@click.option("--embedded", is_flag=True, help="Use the embedded Python broker (amqtt) even when Mosquitto is installed.")
@click.option("--auth-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Require logins: make (once) or reuse credentials, an ACL and signing keys in this folder (Mosquitto only).")
@click.option("--silos", default="", help="With --auth-dir: comma-separated silo names to add credentials and keys for.")
@click.option("--job", default="+", show_default=True,
              help="With --auth-dir: confine every credential to this job's topics; '+': every job.")
@click.option("--tls-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Listen with TLS only: make (once) or reuse a private CA (ca.crt, for clients) and a server certificate here.")
def broker(host: str, port: int | None, embedded: bool, auth_dir: Path | None, silos: str, job: str,
           tls_dir: Path | None) -> None:
    """Run an MQTT broker in the foreground: Mosquitto when installed, else an embedded one."""
    from .broker.secure import prepare_security
    from .broker.server import run_broker

    port = port or (8883 if tls_dir else 1883)
    security = prepare_security(host, port, auth_dir, silos=silos, job=job, tls_dir=tls_dir)
    if security.instructions:
        click.echo(security.instructions, err=True)
    sys.exit(run_broker(host, port, embedded=embedded, auth=security.auth, tls=security.tls))


# -- keys ------------------------------------------------------------------------------------------
@cli.command()
@click.option("--auth-dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Write the keys to AUTH_DIR/keys/<silo>.key (private, 0600) and <silo>.pub.")
@click.option("--silos", required=True, help="Comma-separated silo names.")
def keys(auth_dir: Path, silos: str) -> None:
    """Make Ed25519 signing keys for silos (once: existing keys are kept)."""
    from .broker.secure import make_keys

    click.echo(make_keys(auth_dir, silos))


# -- aggregator ------------------------------------------------------------------------------------

class RegisteredChoice(click.Choice):
    """A choice among registered plug-in names, read from the installed metadata when first needed
    (to check a value or show ``--help``), not when the command tree is built: ``fedmq --help`` reads none."""

    def __init__(self, names: Callable[[], tuple[str, ...]]) -> None:
        self._names = names
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        return self._names()

    @choices.setter
    def choices(self, value: tuple[str, ...]) -> None:
        pass  # click.Choice sets it in __init__; the registry is the source


class ByteSize(click.ParamType):
    """A size in bytes: ``4GiB``, ``512MiB``, ``800MB``, ``1e9`` or a plain number."""

    name = "size"
    UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().replace(" ", "")
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number):]
        try:
            size = int(float(number) * self.UNITS[unit])
        except (ValueError, KeyError):
            self.fail(f"{value!r} is not a size (say 4GiB, 512MiB or 800MB)", param, ctx)
        if size <= 0:
            self.fail(f"{value!r} is not a positive size", param, ctx)
        return size


def _strategy_options(f: Any) -> Any:
    from .aggregator.strategies.options import strategy_names

    positive = click.FloatRange(0, min_open=True)
    options = [
        click.option("--strategy", default="fedavg", show_default=True, type=RegisteredChoice(strategy_names),
                     help="How updates become the new model: fedavg; fedprox (with --mu); robust median, "
                          "trimmed-mean, krum, multi-krum; server optimisers fedadam, fedyogi, fedadagrad."),
        click.option("--mu", default=0.0, type=click.FloatRange(0), help="fedprox: the silos' proximal weight."),
        click.option("--trim", type=click.FloatRange(0, 0.5, max_open=True),
                     help="trimmed-mean: fraction cut from each side per coordinate (default 0.1)."),
        click.option("--krum-f", type=click.IntRange(0), help="krum, multi-krum: byzantine updates tolerated."),
        click.option("--krum-m", type=click.IntRange(1), help="multi-krum: best-scored updates averaged (default n-f)."),
        click.option("--clip-norm", type=positive, help="Clip each update's change to this L2 norm (any strategy)."),
        click.option("--server-lr", type=positive, help="Server step size (1.0; 0.01 for fedadam/fedyogi/fedadagrad)."),
        click.option("--beta1", type=click.FloatRange(0, 1, max_open=True), help="fedadam/fedyogi/fedadagrad (0.9)."),
        click.option("--beta2", type=click.FloatRange(0, 1, max_open=True), help="fedadam/fedyogi (0.99)."),
        click.option("--tau", type=positive, help="Adaptive optimisers' epsilon (1e-3)."),
        click.option("--dp-clip", type=positive, help="DP-FedAvg: clip each update's change to this norm C."),
        click.option("--dp-noise", type=click.FloatRange(0), help="DP-FedAvg: noise multiplier z (std z*C/n)."),
        click.option("--dp-delta", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                     help="DP-FedAvg: the delta at which epsilon is reported (1e-5)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.command()
@_broker_option
@_connect_timeout_option
@_job_option
@_db_option
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1), help="Rounds to train.")
@click.option("--min-clients", default=1, show_default=True, type=click.IntRange(1),
              help="Silos needed to start, and updates needed to aggregate a round.")
@click.option("--task", default="classification", show_default=True, callback=_check_task,
              help="The task plug-in the silos run, by its name: built in, classification or detection; "
                   "or your own task's name (its silos load it with `fedmq client --task module:Class`).")
@click.option("--task-option", "task_option", multiple=True, metavar="KEY=VALUE",
              help="An option for the silos' task (repeatable), e.g. --task-option depth=3; "
                   "or a [aggregator.task-options] table in the config file.")
@click.option("--metric", default=None, help="The headline metric of the silos' evaluations, for logs, plots and "
              f"status (any name the task reports); default: the task's ({defaults_help('metric')}).")
@click.option("--model", default=None, help=f"Model; default: the task's ({defaults_help('model')}). "
              + "; ".join(f"{t}: {', '.join(m)}" for t, m in MODELS.items()) + "; a plug-in task: its own names.")
@click.option("--local-epochs", default=1, show_default=True, type=click.IntRange(0),
              help="Epochs each silo trains per round; 0: silos send back the weights they got.")
@click.option("--batch-size", default=None, type=click.IntRange(1),
              help=f"Batch size on each silo; default: the task's ({defaults_help('batch_size')}).")
@click.option("--lr", default=None, type=click.FloatRange(0, 100, min_open=True),
              help=f"Learning rate on each silo; default: the task's ({defaults_help('lr')}).")
@click.option("--momentum", default=0.9, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the initial model and the silos' shuffling.")
@click.option("--init-weights", type=click.Path(path_type=Path, dir_okay=False),
              help="Initial weights (.safetensors, or a torch state dict loaded weights-only); "
                   "default: the first silo builds them from --model and --seed.")
@click.option("--num-classes", default=None, type=click.IntRange(1),
              help="Model outputs (real classes, without detection's background); default: the silos' labels.")
@click.option("--out", default=Path("fedmq-out"), show_default=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the per-round checkpoints (OUT/<job>/round-NNNN.safetensors).")
@click.option("--round-timeout", default=1800.0, show_default=True, type=click.FloatRange(1),
              help="Seconds a round waits for its silos before aggregating what arrived (at least --min-clients).")
@click.option("--max-reasks", default=3, show_default=True, type=click.IntRange(0, 1000),
              help="A round short of --min-clients updates at its deadline asks the silos it still waits for again, "
                   "and waits another --round-timeout, this many times; then the job fails with the reason "
                   "(the same command resumes it).")
@click.option("--mode", default="sync", show_default=True, type=click.Choice(["sync", "async"]),
              help="sync: rounds wait for their silos; async: FedBuff, a new version every --buffer-size updates.")
@click.option("--buffer-size", default=2, show_default=True, type=click.IntRange(1),
              help="async: updates folded into each new model version.")
@click.option("--max-staleness", default=4, show_default=True, type=click.IntRange(0),
              help="async: reject updates trained on a model more than this many versions old.")
@click.option("--max-samples-per-silo", default=None, type=click.IntRange(1), metavar="N",
              help="Weight no update by more than N samples (min(num_samples, N)), in sync and async mode, so one "
                   "silo claiming a huge count cannot outvote the others. History keeps each silo's claimed count. "
                   "Default: no cap (a claim above what the silo declared when it joined is rejected either way).")
@click.option("--max-concurrent-uploads", default=None, type=click.IntRange(1), metavar="K",
              help="Let K silos send their update at a time (the others wait for a grant); default: as many as "
                   "--memory-budget holds, two models' size each.")
@click.option("--memory-budget", default="4GiB", show_default=True, type=ByteSize(),
              help="Memory the updates in flight may take, which sets how many silos upload at once.")
@click.option("--fraction", default=None, type=click.FloatRange(0, 1, min_open=True),
              help="Sample this share of the online silos for each round (at least --min-clients).")
@click.option("--clients-per-round", default=None, type=click.IntRange(1),
              help="Sample this many of the online silos for each round (at least --min-clients).")
@click.option("--chunk-size", default=DEFAULT_CHUNK_SIZE, show_default=True, type=click.IntRange(1024),
              help="Largest MQTT message in bytes; models are sent in chunks of this size.")
@click.option("--codec", default=DEFAULT_JOB_CODEC, show_default=True, type=click.Choice(JOB_CODECS),
              help="How the silos encode their updates: " + "; ".join(f"{n}: {d}" for n, d in CODEC_HELP.items())
              + ". Models are always sent lossless.")
@click.option("--sign", is_flag=True, help="Require every update and result to be signed by its silo's registered key.")
@click.option("--keys", type=click.Path(path_type=Path, file_okay=False),
              help="With --sign: the folder of the silos' public keys, <silo>.pub (AUTH_DIR/keys).")
@click.option("--secure-agg", is_flag=True,
              help="Secure aggregation (Bonawitz et al. 2017): the silos mask their updates so that the aggregator "
                   "learns only their sum, even when some drop out mid-round. Needs --sign and --keys; sync mode, "
                   "fedavg/fedprox/fedadam/fedyogi/fedadagrad, a lossless codec. Updates are clipped to --clip-norm "
                   "(default 10) by the silos.")
@click.option("--secure-threshold", default=None, type=click.IntRange(2), metavar="T",
              help="With --secure-agg: silos needed to unmask a round (default: a majority of the round's silos); "
                   "T or more colluding silos with the aggregator could unmask one silo.")
@_ca_file_option
@_strategy_options
def aggregator(task_option: tuple[str, ...], strategy: str, keys: Path | None, **options: Any) -> None:
    """Publish a job, wait for --min-clients silos, run federated rounds, then tell the silos it finished."""
    from .api import run_aggregator
    from .schemas.task_options import parse_task_options

    sys.exit(run_aggregator(strategy=strategy, keys_dir=keys, task_options=parse_task_options(task_option),
                            stop=StopFlag().install(), **options))


# -- client ----------------------------------------------------------------------------------------
@cli.command()
@_broker_option
@_connect_timeout_option
@_job_option
@click.option("--silo", required=True, help="This silo's name (letters, digits, '.', '_', '-').")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="The silo's data folder: DIR/train/<class>/* (classification), DIR/train/annotations.json (detection), "
                   "or whatever your --task reads.")
@click.option("--task", default=None, help="The task plug-in: a registered name (classification, detection, or one a "
              "package registers), module:Class, or path/to/file.py:Class; default: the built-in task the --data "
              "folder's layout names.")
@click.option("--work-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where the loss log and received models go; default .fedmq/<job>/<silo>.")
@click.option("--device", default="auto", show_default=True, help="Where to train: auto (a GPU if any), cpu, cuda, cuda:N.")
@click.option("--signing-key", cls=SharedEnvOption, shared_envvar="FEDMQ_SIGNING_KEY",
              type=click.Path(path_type=Path, dir_okay=False),
              help="This silo's Ed25519 private key (AUTH_DIR/keys/<silo>.key), for jobs run with --sign.")
@click.option("--nproc-per-node", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Train each round on this many processes of this machine with torch DistributedDataParallel "
                   "(gloo on the CPU; NCCL with one GPU per process: cuda:N, cuda:N+1, ...). Only the first talks to the broker.")
@_ca_file_option
def client(**options: Any) -> None:
    """Run a silo: join the job, train on local data each round, answer test requests."""
    from .api import run_silo

    sys.exit(run_silo(stop=StopFlag().install(), **options))


# -- history ---------------------------------------------------------------------------------------
@cli.command()
@_db_option
@click.option("--job", default=None, callback=_check_job, help="The job whose rounds to show; default: list the jobs "
              "(or the only job's rounds when there is one).")
@click.option("--json", is_flag=True, help="Print JSON: an array with one object per round (or the --round).")
@click.option("--round", type=click.IntRange(1),
              help="Show this round in detail: each silo's update (accepted or rejected, why) and evaluation.")
@click.option("--csv", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
              help="Write the rounds as CSV to this file ('-': stdout), one row per round.")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False),
              help="Draw the rounds into this image (.png): metrics per round and per silo, silos per round.")
def history(db: str, job: str | None, json: bool, round: int | None, csv: Path | None,  # noqa: A002 (flag names)
            plot: Path | None) -> None:
    """Show the rounds of a job as recorded in the store."""
    from .commands.history import print_history

    print_history(db, job, json, round_number=round, csv_path=csv, plot_path=plot)


# -- status ----------------------------------------------------------------------------------------
@cli.command()
@_broker_option
@_job_option
@click.option("--timeout", default=1.5, show_default=True, type=click.FloatRange(0.1, 60),
              help="Seconds to collect the broker's retained messages.")
@click.option("--connect-timeout", default=5.0, show_default=True, type=click.FloatRange(0),
              help="Seconds to keep trying to reach the broker.")
@click.option("--json", is_flag=True, help="Print JSON instead of a summary.")
@_ca_file_option
def status(broker: str, ca_file: Path | None, job: str, timeout: float, connect_timeout: float, json: bool) -> None:
    """Show a job live, from the broker: its spec, the silos online, the current round and its deadline."""
    from .broker.url import parse_broker_url
    from .commands.status import print_status

    print_status(parse_broker_url(broker, ca_file), job, timeout=timeout, connect_timeout=connect_timeout, as_json=json)


# -- dashboard -------------------------------------------------------------------------------------
@cli.command()
@_db_option
@click.option("--broker", cls=SharedEnvOption, shared_envvar="FEDMQ_BROKER", default=None,
              help="MQTT broker URL to watch live (or $FEDMQ_BROKER); it needs a login that may read every job's "
                   "init, status and presence topics (the aggregator's). Without it: the store alone.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; any other than 127.0.0.1, ::1 or localhost needs a token.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--token", help="Require this bearer token on every request (or $FEDMQ_DASHBOARD_TOKEN); 16+ characters.")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Read the token from the first line of this file instead (keeps it out of the process list).")
@_ca_file_option
def dashboard(db: str, broker: str | None, host: str, port: int, token: str | None, token_file: Path | None,
              ca_file: Path | None) -> None:
    """Serve a read-only web dashboard of the store's jobs, live from the broker, with Prometheus /metrics."""
    from .broker.url import parse_broker_url
    from .dashboard.server import read_token, run_dashboard

    run_dashboard(db, parse_broker_url(broker, ca_file) if broker else None, host=host, port=port,
                  token=read_token(token, token_file))


# -- export ----------------------------------------------------------------------------------------
@cli.command()
@_db_option
@_job_option
@click.option("--round", type=click.IntRange(0),
              help="The round whose global model to export (0: the initial model); default the last completed.")
@click.option("--out-dir", default=Path("fedmq-out"), show_default=True, type=click.Path(path_type=Path, file_okay=False),
              help="The aggregator's --out: where the round checkpoints are.")
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The file to write: model.pt (torch.save of the state dict) or model.safetensors.")
def export(db: str, job: str, round: int | None, out_dir: Path, out: Path) -> None:  # noqa: A002 (flag names)
    """Export a round's global model as a plain state dict, loadable with torchvision's own constructor."""
    from .commands.export import export_model

    export_model(db, job, round, out_dir, out)


# -- db --------------------------------------------------------------------------------------------
@cli.group("db")
def db_group() -> None:
    """The store's database: its schema migrations."""


@db_group.command("upgrade")
@_db_option
def db_upgrade(db: str) -> None:
    """Create the store's tables or migrate them to this fedmq's schema (the aggregator does it at start)."""
    from .store import upgrade_store

    click.echo(upgrade_store(db))


# -- data ------------------------------------------------------------------------------------------
@cli.group()
def data() -> None:
    """Make or split silo data sets."""


@data.command("synth")
@click.option("--task", default="classification", show_default=True, type=click.Choice(TASKS))
@click.option("--silos", required=True, type=click.IntRange(1, 10_000))
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--images-per-silo", default=None, type=click.IntRange(2),
              help="Images per silo, train and test together (default 200 classification, 24 detection).")
@click.option("--image-size", default=None, type=click.IntRange(16, 4096),
              help="Image side in pixels (default 32 classification, 128 detection).")
def data_synth(task: str, silos: int, out: Path, seed: int, images_per_silo: int | None, image_size: int | None) -> None:
    """Write a small learnable synthetic data set as OUT/0 … OUT/N-1."""
    from .edge_client.data.split_folder import check_empty_out

    check_empty_out(out)
    if task == "classification":
        from .edge_client.data.synth_classification import synth_classification

        total = images_per_silo or 200
        test = max(1, total // 5)
        synth_classification(out, silos, seed=seed, train_per_silo=total - test, test_per_silo=test,
                             image_size=image_size or 32)
    else:
        from .edge_client.data.coco import synth_detection

        synth_detection(out, silos, images_per_silo=images_per_silo or 24, image_size=image_size or 128, seed=seed)
    click.echo(f"wrote {silos} {task} silo folder(s) under {out}")


@data.command("split-folder")
@click.option("--src", required=True, type=click.Path(path_type=Path), help="An image-folder data set.")
@click.option("--silos", required=True, type=click.IntRange(1, 10_000))
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--alpha", default=None, type=click.FloatRange(0, min_open=True),
              help="Dirichlet concentration for a non-IID split by label (small: skewed); default IID.")
@click.option("--test-fraction", default=0.2, show_default=True, type=click.FloatRange(0, 1),
              help="Share held out for test when SRC has no train/ and test/ folders.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--copy", is_flag=True, help="Copy the images instead of symlinking them.")
def data_split_folder(src: Path, silos: int, out: Path, alpha: float | None, test_fraction: float, seed: int,
                      copy: bool) -> None:
    """Split an image-folder data set into silo folders OUT/0 … OUT/N-1."""
    from .edge_client.data.split_folder import split_folder

    split_folder(src, silos, out, alpha=alpha, seed=seed, test_fraction=test_fraction, copy=copy)
    click.echo(f"wrote {silos} silo folder(s) under {out}")


@data.command("split-coco")
@click.option("--annotations", required=True, type=click.Path(path_type=Path), help="A COCO instances JSON file.")
@click.option("--images", required=True, type=click.Path(path_type=Path), help="The folder of its images.")
@click.option("--silos", required=True, type=click.IntRange(1, 10_000))
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--test-fraction", default=0.2, show_default=True, type=click.FloatRange(0, 1))
@click.option("--alpha", default=None, type=click.FloatRange(0, min_open=True),
              help="Dirichlet concentration over each image's dominant category; default IID.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--copy", is_flag=True, help="Copy the images instead of symlinking them.")
def data_split_coco(annotations: Path, images: Path, silos: int, out: Path, test_fraction: float,
                    alpha: float | None, seed: int, copy: bool) -> None:
    """Split one COCO annotation file and its images into detection silo folders OUT/0 … OUT/N-1."""
    from .edge_client.data.coco import split_coco

    split_coco(annotations, images, silos, out, test_fraction=test_fraction, alpha=alpha, seed=seed,
               mode="copy" if copy else "symlink")
    click.echo(f"wrote {silos} silo folder(s) under {out}")


# -- demo ------------------------------------------------------------------------------------------
@cli.command()
@click.option("--task", default="classification", show_default=True, type=click.Choice(TASKS))
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1))
@click.option("--silos", default=3, show_default=True, type=click.IntRange(1, 20))
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False),
              help="Keep data, logs, store and checkpoints here (default: a new temporary folder).")
@click.option("--dashboard", "open_dashboard", is_flag=True,
              help="Open the demo's dashboard in a web browser, and keep it running after the job until Ctrl-C.")
def demo(task: str, rounds: int, silos: int, workdir: Path | None, open_dashboard: bool) -> None:
    """Run a whole federation on this machine: a broker, an aggregator and silos on synthetic data."""
    from .commands.demo import run_demo

    sys.exit(run_demo(task=task, rounds=rounds, silos=silos, workdir=workdir, open_dashboard=open_dashboard))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a short command like Ctrl-C: finally-blocks run


def main() -> None:
    # The long-running loops (aggregator, client) replace this with a stop flag they check between
    # steps (stopping.py); the other commands are short, or (broker, demo) stop their children on it.
    signal.signal(signal.SIGTERM, _interrupt)
    cli(prog_name="fedmq")


if __name__ == "__main__":
    main()

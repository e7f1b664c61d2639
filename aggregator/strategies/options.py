"""``StrategyOptions``: every knob of the aggregation strategies, checked once; the strategy names.

Torch-free, so the CLI can offer the names and check the options before anything heavy loads.
The names are those registered in the entry point group ``fedmq.strategies`` (pyproject.toml, and
any other installed package's), read from the installed metadata: nothing is imported to list them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError

# Which options apply to which built-in strategies (a plug-in of another package takes the shared ones only).
ADAPTIVE_NAMES = ("fedadam", "fedyogi", "fedadagrad")
ROBUST_NAMES = ("median", "trimmed-mean", "krum", "multi-krum")
KRUM_NAMES = ("krum", "multi-krum")

DEFAULT_TRIM = 0.1
DEFAULT_SERVER_LR = 1.0
DEFAULT_ADAPTIVE_LR = 1e-2
DEFAULT_BETA1 = 0.9
DEFAULT_BETA2 = 0.99
DEFAULT_TAU = 1e-3
DEFAULT_DP_DELTA = 1e-5


@functools.cache
def strategy_names() -> tuple[str, ...]:
    """The registered strategy names, sorted (read once: it scans the installed packages' metadata)."""
    from ...plugins import STRATEGIES, names  # importlib.metadata: 0.05 s that `fedmq --help` need not pay

    return tuple(names(STRATEGIES))


def __getattr__(name: str) -> Any:
    """``STRATEGY_NAMES``, computed on first use so that importing this module reads no metadata."""
    if name == "STRATEGY_NAMES":
        return strategy_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class StrategyOptions:
    """``None`` means "not given": the strategy's default, and an error where the option does not apply.

    name: a registered strategy (``strategy_names()``); fedprox aggregates as fedavg (its proximal term is the silos').
    trim: trimmed-mean's fraction cut from each side, 0 <= trim < 0.5 (default 0.1).
    krum_f: byzantine updates krum/multi-krum tolerate (default: the most the round's n allows, n > 2f + 2).
    krum_m: how many best-scored updates multi-krum averages (default n - f).
    clip_norm: scale each update's delta to global L2 norm at most this before combining.
    server_lr: the server step size (default 1.0, plain FedAvg; 1e-2 for fedadam, fedyogi, fedadagrad).
    beta1, beta2, tau: the adaptive optimisers' (defaults 0.9, 0.99, 1e-3; fedadagrad has no beta2).
    dp_clip, dp_noise: DP-FedAvg's clip norm C and noise multiplier z, given together; with fedavg, fedprox or
        an adaptive optimiser. dp_delta: the delta epsilon is reported at (default 1e-5).
    seed: seeds the DP noise, for reproducible tests only: noise from a seed the silos know can be removed.
    spill_dir: where median, trimmed-mean and krum keep a round's updates on disk (spill.py); None: the
        system's temp folder. The aggregator passes ``<--out>/<job>/spill``.
    """

    name: str = "fedavg"
    trim: float | None = None
    krum_f: int | None = None
    krum_m: int | None = None
    clip_norm: float | None = None
    server_lr: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    tau: float | None = None
    dp_clip: float | None = None
    dp_noise: float | None = None
    dp_delta: float | None = None
    seed: int | None = None
    spill_dir: str | None = None

    def __post_init__(self) -> None:
        validate(self)

    @property
    def dp(self) -> bool:
        return self.dp_clip is not None

    @property
    def min_updates(self) -> int:
        """The fewest updates a round needs for the options to mean what they say (krum with a given f: 2f + 3)."""
        return 2 * self.krum_f + 3 if self.name in KRUM_NAMES and self.krum_f is not None else 1


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _only_for(options: StrategyOptions, field: str, names: tuple[str, ...]) -> None:
    if getattr(options, field) is not None and options.name not in names:
        raise ConfigError(f"{_flag(field)} does not apply to --strategy {options.name}",
                          hint=f"use it with --strategy {' or '.join(names)}, or leave it out")


def _number(options: StrategyOptions, field: str, low: float, high: float = math.inf, *,
            low_open: bool = True, high_open: bool = True, what: str = "") -> None:
    value = getattr(options, field)
    if value is None:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
        and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        bounds = f"{'above' if low_open else 'at least'} {low:g}"
        if high != math.inf:
            bounds += f" and {'below' if high_open else 'at most'} {high:g}"
        raise ConfigError(f"{_flag(field)} {value!r} is out of range", hint=f"give a number {bounds}{what}")


def _integer(options: StrategyOptions, field: str, low: int) -> None:
    value = getattr(options, field)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
        raise ConfigError(f"{_flag(field)} {value!r} is not a whole number of at least {low}",
                          hint=f"give a whole number of at least {low}")


def validate(o: StrategyOptions) -> None:
    """Raise ConfigError, with a hint, for a value out of range or an option that makes no sense with the others."""
    if o.name not in strategy_names():
        raise ConfigError(f"unknown strategy {o.name!r}", hint=f"choose one of: {', '.join(strategy_names())}")
    _only_for(o, "trim", ("trimmed-mean",))
    _number(o, "trim", 0.0, 0.5, low_open=False, what=" (the fraction cut from each side; 0.5 would cut everything)")
    _only_for(o, "krum_f", KRUM_NAMES)
    _integer(o, "krum_f", 0)
    _only_for(o, "krum_m", ("multi-krum",))
    _integer(o, "krum_m", 1)
    _number(o, "clip_norm", 0.0)
    _number(o, "server_lr", 0.0)
    _only_for(o, "beta1", ADAPTIVE_NAMES)
    _only_for(o, "beta2", ("fedadam", "fedyogi"))
    _only_for(o, "tau", ADAPTIVE_NAMES)
    _number(o, "beta1", 0.0, 1.0, low_open=False)
    _number(o, "beta2", 0.0, 1.0, low_open=False)
    _number(o, "tau", 0.0)
    if (o.dp_clip is None) != (o.dp_noise is None):
        raise ConfigError("differential privacy needs both --dp-clip and --dp-noise",
                          hint="give the clip norm C and the noise multiplier z together (e.g. --dp-clip 1 --dp-noise 1)")
    if o.dp_delta is not None and not o.dp:
        raise ConfigError("--dp-delta is only used with differential privacy", hint="add --dp-clip and --dp-noise, or drop it")
    _number(o, "dp_clip", 0.0)
    _number(o, "dp_noise", 0.0, low_open=False)
    _number(o, "dp_delta", 0.0, 1.0)
    if o.dp and o.name in ROBUST_NAMES:
        raise ConfigError(f"differential privacy cannot be combined with --strategy {o.name}",
                          hint="DP-FedAvg calibrates its noise to a mean: use fedavg, fedprox, fedadam, fedyogi or fedadagrad")
    if o.dp and o.clip_norm is not None:
        raise ConfigError("--clip-norm and --dp-clip both clip the updates",
                          hint="with differential privacy, --dp-clip alone sets the clip norm")
    _integer(o, "seed", 0)

"""``fedmq history --plot``: a job's rounds as one figure, drawn with matplotlib's Agg backend.

Three panels over the rounds: the task's main metric (accuracy or mAP) aggregated and per silo,
the losses (test loss, train loss), and the silos that took part in each round (rejected updates
stacked on top). A ``Figure`` with an Agg canvas is used directly, never pyplot, so nothing needs
a display and no global state is touched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..extras import require_extra

MAIN_METRICS = ("accuracy", "map", "map50")  # the first one the job reports is the headline
LOSSES = (("loss", "test loss"), ("train_loss", "train loss"))
SIZE_IN = (8.0, 9.0)
DPI = 100


def main_metric(rounds: list[dict[str, Any]]) -> str | None:
    present = {k for r in rounds for k in r["metrics"]} | {k for r in rounds for e in r["evaluations"].values() for k in e}
    return next((k for k in MAIN_METRICS if k in present), None)


def plot_rounds(job: str, rounds: list[dict[str, Any]], path: Path) -> Path:
    """Draw the rounds of ``job`` (``Store.history`` dicts) into ``path``; its suffix picks the format."""
    require_extra("matplotlib", "plot", "fedmq history --plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rounds:
        raise ConfigError(f"job {job!r} has no rounds to plot yet", hint="plot it once a round has completed")
    fmt = path.suffix.lstrip(".").lower()
    fig = Figure(figsize=SIZE_IN, dpi=DPI, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    if fmt not in canvas.get_supported_filetypes():
        raise ConfigError(f"cannot plot to {path}: unknown image format {fmt or '(none)'!r}",
                          hint="name the file .png (or .svg, .pdf)")
    metric_ax, loss_ax, clients_ax = fig.subplots(3, 1, sharex=True, height_ratios=(3, 2, 1.3))
    numbers = [r["round"] for r in rounds]
    metric = main_metric(rounds)
    _metric_panel(metric_ax, rounds, metric)
    _loss_panel(loss_ax, rounds)
    clients = [len(r["clients"]) for r in rounds]
    rejected = [r["rejected"] for r in rounds]
    clients_ax.bar(numbers, clients, color="tab:blue", label="silos aggregated")
    if any(rejected):
        clients_ax.bar(numbers, rejected, bottom=clients, color="tab:red", label="updates rejected")
    clients_ax.set_ylim(0, 1.5 * max(c + r for c, r in zip(clients, rejected)) + 0.5)  # room for the legend
    clients_ax.set_ylabel("silos")
    clients_ax.set_xlabel("round")
    clients_ax.yaxis.get_major_locator().set_params(integer=True)
    clients_ax.xaxis.get_major_locator().set_params(integer=True)
    clients_ax.legend(loc="upper left", fontsize="small", ncol=2)
    fig.suptitle(f"fedmq job {job}: {len(rounds)} round(s)")
    try:
        fig.savefig(path, format=fmt)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}", hint="check the --plot path") from None
    return path


def _series(rounds: list[dict[str, Any]], get: Any) -> tuple[list[int], list[float]]:
    """The rounds where ``get(round)`` has a finite value, and those values."""
    xs, ys = [], []
    for r in rounds:
        value = get(r)
        if isinstance(value, int | float) and math.isfinite(value):
            xs.append(r["round"])
            ys.append(float(value))
    return xs, ys


def _metric_panel(ax: Any, rounds: list[dict[str, Any]], metric: str | None) -> None:
    if metric is None:
        ax.text(0.5, 0.5, "no evaluation metrics yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylabel("metric")
        return
    silos = sorted({s for r in rounds for s, e in r["evaluations"].items() if metric in e})
    for silo in silos:
        xs, ys = _series(rounds, lambda r, s=silo: r["evaluations"].get(s, {}).get(metric))
        ax.plot(xs, ys, marker=".", linewidth=1, alpha=0.6, label=silo)
    xs, ys = _series(rounds, lambda r: r["metrics"].get(metric))
    ax.plot(xs, ys, marker="o", linewidth=2.5, color="black", label="all silos (weighted)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small", ncol=max(1, math.ceil((len(silos) + 1) / 8)))


def _loss_panel(ax: Any, rounds: list[dict[str, Any]]) -> None:
    drawn = 0
    for key, label in LOSSES:
        xs, ys = _series(rounds, lambda r, k=key: r["metrics"].get(k))
        if xs:
            ax.plot(xs, ys, marker="o", label=label)
            drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no losses yet", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(loc="best", fontsize="small")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)

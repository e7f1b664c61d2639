"""``/metrics``: the federation in Prometheus's text format, with the official ``prometheus_client``.

A custom collector reads the store and the broker watcher at each scrape, so the figures are the
store's own (they match ``fedmq history``) and nothing is counted twice across dashboard restarts.
The federation's job name is the label ``fedmq_job``: Prometheus keeps ``job`` for its own scrape job.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from ..store import Store
from .live import LiveView
from .queries import totals

PHASES = ("waiting", "training", "evaluating", "finished")


class FederationCollector(Collector):
    def __init__(self, store: Store, live: LiveView) -> None:
        self.store = store
        self.live = live

    def collect(self) -> Iterator[Any]:
        figures = totals(self.store)
        rounds = CounterMetricFamily("fedmq_rounds_completed", "Rounds completed (aggregated and evaluated).",
                                     labels=["fedmq_job"])
        duration = SummaryMetricFamily("fedmq_round_duration_seconds",
                                       "Completed rounds, from opening to the end of their evaluation.", labels=["fedmq_job"])
        last = GaugeMetricFamily("fedmq_last_round_duration_seconds", "The last completed round's duration.",
                                 labels=["fedmq_job"])
        accepted = CounterMetricFamily("fedmq_updates_accepted", "Updates the aggregator counted.", labels=["fedmq_job"])
        rejected = CounterMetricFamily("fedmq_updates_rejected", "Updates the aggregator rejected, by reason "
                                       "(numbers and the silo's name replaced by N and SILO).", labels=["fedmq_job", "reason"])
        received = CounterMetricFamily("fedmq_received_bytes", "Bytes of update payloads received, accepted or not.",
                                       labels=["fedmq_job"])
        online = GaugeMetricFamily("fedmq_silos_online", "Silos online: from the broker's presences when watched, "
                                   "else as the aggregator last recorded them.", labels=["fedmq_job"])
        for job, t in sorted(figures.items()):
            rounds.add_metric([job], t["rounds_completed"])
            duration.add_metric([job], count_value=len(t["durations"]), sum_value=sum(t["durations"]))
            if t["durations"]:
                last.add_metric([job], t["durations"][-1])
            accepted.add_metric([job], t["accepted"])
            for reason, n in sorted(t["rejected"].items()):
                rejected.add_metric([job, reason], n)
            received.add_metric([job], t["bytes"])
            live = self.live.job(job)
            online.add_metric([job], len(live["online"]) if live else t["silos_online"])
        yield from (rounds, duration, last, accepted, rejected, received, online)
        yield from self._live_figures()

    def _live_figures(self) -> Iterator[Any]:
        up = GaugeMetricFamily("fedmq_broker_connected", "1 while the dashboard is connected to the broker.")
        up.add_metric([], 1.0 if self.live.connected else 0.0)
        yield up
        current = GaugeMetricFamily("fedmq_round", "The round the aggregator is on (its RoundStatus).", labels=["fedmq_job"])
        phase = GaugeMetricFamily("fedmq_round_phase", "1 for the aggregator's current phase.", labels=["fedmq_job", "phase"])
        left = GaugeMetricFamily("fedmq_round_deadline_seconds", "Seconds until the open round stops waiting.",
                                 labels=["fedmq_job"])
        memory = GaugeMetricFamily("fedmq_aggregator_peak_memory_bytes", "The aggregator's peak resident memory.",
                                   labels=["fedmq_job"])
        for job in self.live.jobs():
            view = self.live.job(job)
            r = view["round"] if view else None
            if r is None or not r["current"]:
                continue
            current.add_metric([job], r["round"])
            for p in PHASES:
                phase.add_metric([job, p], 1.0 if r["phase"] == p else 0.0)
            if r["seconds_left"] is not None:
                left.add_metric([job], r["seconds_left"])
            if view["peak_memory_bytes"] is not None:
                memory.add_metric([job], view["peak_memory_bytes"])
        yield from (current, phase, left, memory)


def registry(store: Store, live: LiveView) -> CollectorRegistry:
    """A registry of the federation's figures alone (not the dashboard process's own)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FederationCollector(store, live))
    return reg

"""The interfaces: a ``Strategy`` as the aggregator sees it, and the ``Combiner`` and ``ServerStep`` it is built from."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

from ...schemas.codec import StateDict

if TYPE_CHECKING:
    from .options import StrategyOptions

Report = dict[str, float | int | str | list]


class Strategy(Protocol):
    """Turns one round's updates into the next global model.

    ``streaming`` is True when memory stays one model-sized accumulator however many updates arrive.
    """

    name: str
    streaming: bool

    def begin(self, global_state: StateDict, *, sample_rate: float = 1.0) -> None:
        """Start a round from the current global model. ``sample_rate``: the fraction of eligible silos
        asked this round, only used by differential-privacy accounting."""

    def add(self, state: StateDict, weight: float, *, base: StateDict | None = None, silo: str = "",
            consume: bool = False) -> None:
        """Fold in one accepted update with its weight (the silo's sample count). Its delta is
        ``state - base``; ``base`` defaults to the round's global model (async mode passes the older
        version the silo trained from). With ``consume`` the caller gives ``state`` up: its tensors
        are taken out one by one as their deltas are made, so an update and its delta are never
        both whole in memory."""

    def resume(self, completed: list[Report]) -> None:
        """Before the first round of a resumed job: the recorded metrics of the rounds it completed,
        in order (what must carry over a restart, such as the privacy spent)."""

    def result(self) -> StateDict:
        """The new global model, in the global model's dtypes. Call once per round, after at least one ``add``."""

    def report(self) -> Report:
        """What the last ``result`` should be recorded with (selected silos, clipped updates, epsilon...)."""


class Combiner(Protocol):
    """How a round's float deltas become one delta. Integer buffers never reach a combiner."""

    name: str
    streaming: bool

    def begin(self) -> None: ...

    def add(self, delta: StateDict, weight: float, silo: str) -> None:
        """Take one update's delta; it is the combiner's to keep or modify."""

    def combine(self) -> StateDict: ...

    def report(self) -> Report: ...


class ServerStep(Protocol):
    """How the combined delta moves the global model's float tensors."""

    name: str

    def step(self, params: StateDict, delta: StateDict) -> StateDict:
        """The new float tensors; ``params`` must not be modified."""


class Parts(NamedTuple):
    """What a registered strategy is made of: its combiner, and its server step (None: plain, ``--server-lr``)."""

    combiner: Combiner
    server: ServerStep | None = None


class Build(Protocol):
    """A registered strategy (entry point group ``fedmq.strategies``): builds its parts from the options."""

    def __call__(self, options: StrategyOptions) -> Parts: ...


class KeepAll:
    """Base of the robust combiners: they need every delta at once. The deltas wait on disk
    (``SpilledDeltas``), so memory stays one delta and a block whatever the number of updates."""

    streaming = False

    def __init__(self, spill_dir: str | None = None) -> None:
        from .spill import SpilledDeltas  # numpy and torch: not loaded by a plug-in that imports only the interfaces

        self.deltas = SpilledDeltas(spill_dir)
        self.silos: list[str] = []

    def begin(self) -> None:
        self.deltas.clear()
        self.silos = []

    def add(self, delta: StateDict, weight: float, silo: str) -> None:
        self.deltas.add(delta)
        self.silos.append(silo or f"update {len(self.silos) + 1}")

    def combine(self) -> StateDict:
        try:
            return self.combine_spilled()
        finally:
            self.deltas.clear()  # the round's result is made: its deltas' files go

    def combine_spilled(self) -> StateDict:
        raise NotImplementedError

    def report(self) -> Report:
        return {}

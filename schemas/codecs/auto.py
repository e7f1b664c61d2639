"""``--codec auto``: each lossless payload goes compressed (``shuffle+zstd``) or not (``raw``),
whichever the sender's measurements say is faster on its link.

The rule, per byte of the model (``docs/how-it-works.md`` explains it too)::

    compressed costs   1/E + 1/D + r/L        raw costs   1/L

``E``: the sender's encode throughput with ``shuffle+zstd`` (raw bytes per second), measured on
its last compressed payload; ``D``: its decode throughput, measured once on that payload, as the
estimate of the receiver's (both sides run the same code); ``r``: compressed size over raw; ``L``:
the link's upload throughput, bytes per second of the sender's recent publishes (from handing
the chunks to the connection to the broker's last acknowledgement, the median of the last
``LINK_SAMPLES``). Compression pays while ``(1 - r) / L > 1/E + 1/D``, that is while
``L < (1 - r) / (1/E + 1/D)``: on loopback or a fast LAN the link outruns the codec and ``raw``
wins; on a slow uplink the bytes saved win. Until both sides of the rule are measured (the first
payload), the sender compresses, as fedmq did before. A sender that went raw keeps measuring its
link and goes back to compressing if the link slows down (its ``E``, ``D`` and ``r`` are those of
its last compressed payload). The choice, and the figures behind it, are logged whenever it changes.

The receiver needs none of this: every payload names its codec (``PayloadInfo.codec``).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque

from ..codec import StateDict, decode_state, encode_state, raw_size
from .names import RAW, SHUFFLE_ZSTD

log = logging.getLogger(__name__)

LINK_SAMPLES = 3
MIN_MEASURED_BYTES = 256 * 1024  # smaller publishes time the round trip, not the link: not counted
MB = 1e6


class AutoCodec:
    """One sender's choice between ``shuffle+zstd`` and ``raw``; ``who`` names the sender in the log."""

    def __init__(self, who: str = "this sender") -> None:
        self.who = who
        self.encode_rate: float | None = None  # E, raw bytes/s
        self.decode_rate: float | None = None  # D, raw bytes/s
        self.ratio: float | None = None  # r
        self.links: deque[float] = deque(maxlen=LINK_SAMPLES)  # L samples, bytes/s
        self.chosen: str | None = None

    @property
    def link_rate(self) -> float | None:
        return statistics.median(self.links) if self.links else None

    def threshold(self) -> float | None:
        """The link throughput (bytes/s) below which compression pays; None until measured."""
        if self.encode_rate is None or self.decode_rate is None or self.ratio is None:
            return None
        return max(0.0, 1.0 - self.ratio) / (1.0 / self.encode_rate + 1.0 / self.decode_rate)

    def choose(self) -> tuple[str, str]:
        """The codec for the next payload, and why."""
        threshold, link = self.threshold(), self.link_rate
        if threshold is None or link is None:
            return SHUFFLE_ZSTD, "compressed until the link and the codec are measured (first payload)"
        figures = (f"link {link / MB:.1f} MB/s; compression to {self.ratio:.3f} of raw at {self.encode_rate / MB:.0f} MB/s "
                   f"encode, {self.decode_rate / MB:.0f} MB/s decode pays below {threshold / MB:.1f} MB/s")
        if link < threshold:
            return SHUFFLE_ZSTD, f"compressed: {figures}"
        return RAW, f"uncompressed (raw): {figures}"

    def encode(self, state: StateDict) -> tuple[str, bytes]:
        """Choose, encode, and learn from it: (codec, payload)."""
        codec, reason = self.choose()
        size = raw_size(state)
        if self.threshold() is None and size < MIN_MEASURED_BYTES:
            reason = f"compressed: a model of {size} bytes is too small to measure the codec and the link on"
        if codec != self.chosen:
            log.info("codec auto for %s: %s", self.who, reason)
            self.chosen = codec
        start = time.perf_counter()
        payload = encode_state(state, codec)
        seconds = time.perf_counter() - start
        if codec == SHUFFLE_ZSTD and size >= MIN_MEASURED_BYTES:
            self.encode_rate = size / max(seconds, 1e-6)
            self.ratio = len(payload) / size
            if self.decode_rate is None:
                start = time.perf_counter()
                decode_state(payload, codec, len(payload) + size + (1 << 20))
                self.decode_rate = size / max(time.perf_counter() - start, 1e-6)
        return codec, payload

    def sent(self, nbytes: int, seconds: float) -> None:
        """A publish of ``nbytes`` took ``seconds``: a sample of the link's throughput."""
        if nbytes >= MIN_MEASURED_BYTES and seconds > 0:
            self.links.append(nbytes / seconds)

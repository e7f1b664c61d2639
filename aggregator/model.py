"""``GlobalModel``: one version of the global model, as every part of the aggregator holds it.

Its own module because the federation and both round policies hold versions of it: here, neither
imports the other to get it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..schemas import DEFAULT_CODEC
from ..schemas.codec import AUTO, Base, StateDict, encode_state, lossless_codec, payload_digest
from ..schemas.codecs.auto import AutoCodec

# --codec auto for the model broadcasts: one per process, as the process has one link to the broker.
# AggregatorLink.send_model feeds it the throughput of each broadcast.
LINK = AutoCodec("the aggregator's broadcasts")


@dataclass
class GlobalModel:
    """One version of the global model, encoded once and sent as often as needed."""

    version: int
    state: StateDict
    payload: bytes
    digest: str
    codec: str = DEFAULT_CODEC

    @classmethod
    def of(cls, version: int, state: StateDict, codec: str) -> GlobalModel:
        """Encode with the job's codec if it is lossless, else ``auto``: a model is always sent exactly.

        ``digest`` (BLAKE3 of the payload) names this version: ``base_digest``, ``model_digest``.
        """
        codec = lossless_codec(codec)
        if codec == AUTO:
            codec, payload = LINK.encode(state)
        else:
            payload = encode_state(state, codec)
        return cls(version=version, state=state, payload=payload, digest=payload_digest(payload), codec=codec)

    @property
    def base(self) -> Base:
        """What an update trained from this model is decoded against (lossy codecs send only the change)."""
        return Base(self.state, self.digest)

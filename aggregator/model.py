"""``GlobalModel``: one version of the global model, as every part of the aggregator holds it.

Its own module because the federation and both round policies hold versions of it: here, neither
imports the other to get it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..schemas import DEFAULT_CODEC
from ..schemas.codec import Base, StateDict, encode_state, lossless_codec, sha256_hex


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
        """Encode with the job's codec if it is lossless, else the default: a model is always sent exactly."""
        codec = lossless_codec(codec)
        payload = encode_state(state, codec)
        return cls(version=version, state=state, payload=payload, digest=sha256_hex(payload), codec=codec)

    @property
    def base(self) -> Base:
        """What an update trained from this model is decoded against (lossy codecs send only the change)."""
        return Base(self.state, self.digest)

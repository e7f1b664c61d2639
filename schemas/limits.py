"""Sizes both ends agree on by default. Plain numbers, so the CLI can show them without the framing code."""

DEFAULT_CHUNK_SIZE = 1024 * 1024
"""The largest MQTT message fedmq sends: models go out in chunks of this size."""
DEFAULT_MAX_PAYLOAD_BYTES = 1 << 30
"""The cap on one message (and on a payload once decompressed) while the model's size is not known yet.
Once it is, each end takes ``payload_limit`` of the model instead, so a model of any size goes through."""
MAX_SILOS_LISTED = 5_000
"""The most silo names one message lists (a round status, a model's sampled silos)."""


def payload_limit(raw_bytes: int, tensors: int) -> int:
    """The most bytes a model's payload (a model, an update of it, its initial weights) may take on the
    wire or once decompressed: its raw tensors, plus room for the container's header and a tiny
    compression overhead. No honest payload is larger, and nothing smaller than the model is refused."""
    return int(raw_bytes * 1.05) + 64 * tensors + (1 << 20)

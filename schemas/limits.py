"""Sizes both ends agree on by default. Plain numbers, so the CLI can show them without the framing code."""

DEFAULT_CHUNK_SIZE = 1024 * 1024
"""The largest MQTT message fedmq sends: models go out in chunks of this size."""
DEFAULT_MAX_PAYLOAD_BYTES = 1 << 30
"""The default cap on one message (and on a payload once decompressed): well above Faster R-CNN R50."""
MAX_SILOS_LISTED = 5_000
"""The most silo names one message lists (a round status, a model's sampled silos)."""

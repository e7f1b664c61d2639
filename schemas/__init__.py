"""The wire contract: topics, typed message headers, the tensor codec and chunk framing.

Pure: no sockets, no database, no model code. Both the aggregator and the silos import it, and
nothing else spells a topic or a header field.

Importing this package loads nothing but itself: each name below is imported from its module on
first use, so the CLI starts without pydantic and nothing here loads torch. The tensor codec
(``schemas.codec``: ``encode_state``, ``decode_state``, ``StateDict``...) is imported by name
where tensors are touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:
    from .codecs.names import CODECS, DEFAULT_CODEC
    from .framing import (
        DEFAULT_CHUNK_SIZE,
        DEFAULT_MAX_PAYLOAD_BYTES,
        Envelope,
        Reassembler,
        Received,
        encode_chunks,
        unpack_message,
    )
    from .messages import (
        PROTOCOL_VERSION,
        InitRequest,
        JobSpec,
        ModelSync,
        PayloadInfo,
        Presence,
        TestRequest,
        TestResult,
        Update,
        parse_header,
    )
    from .topics import Topics, check_name

_WHERE = {
    **dict.fromkeys(["CODECS", "DEFAULT_CODEC"], ".codecs.names"),
    **dict.fromkeys(["DEFAULT_CHUNK_SIZE", "DEFAULT_MAX_PAYLOAD_BYTES"], ".limits"),
    **dict.fromkeys(["Envelope", "Reassembler", "Received", "encode_chunks", "unpack_message"], ".framing"),
    **dict.fromkeys(["PROTOCOL_VERSION", "InitRequest", "JobSpec", "ModelSync", "PayloadInfo", "Presence", "TestRequest",
                     "TestResult", "Update", "parse_header"], ".messages"),
    **dict.fromkeys(["Topics", "check_name"], ".topics"),
}
__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)

"""The wire contract: topics, typed message headers, the tensor codec and chunk framing.

Pure: no sockets, no database, no model code. Both the aggregator and the silos import it, and
nothing else spells a topic or a header field.
"""

from .codec import CODECS, DEFAULT_CODEC, Base, StateDict, decode_state, encode_state, sha256_hex
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

__all__ = [
    "CODECS",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CODEC",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "PROTOCOL_VERSION",
    "Base",
    "Envelope",
    "InitRequest",
    "JobSpec",
    "ModelSync",
    "PayloadInfo",
    "Presence",
    "Reassembler",
    "Received",
    "StateDict",
    "TestRequest",
    "TestResult",
    "Topics",
    "Update",
    "check_name",
    "decode_state",
    "encode_chunks",
    "encode_state",
    "parse_header",
    "sha256_hex",
    "unpack_message",
]

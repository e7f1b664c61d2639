"""The cryptography of secure aggregation, shared by the silos and the aggregator. Pure: numpy and
``cryptography``, no I/O, no torch.

* **Shamir secret sharing** over the prime field GF(2^521 - 1) (a Mersenne prime, larger than any
  32-byte secret): ``split`` and ``combine``. Written here because no well-kept library does it for
  32-byte secrets (pycryptodome's ``Shamir`` takes 16-byte ones, and would be a second crypto library).
* **Key agreement**: X25519, then HKDF-SHA256 bound to a label (``agree``).
* **End-to-end encryption of shares**: ChaCha20-Poly1305 (``seal`` / ``unseal``), with the job, run,
  round, dealer and holder as associated data, so a ciphertext cannot be replayed elsewhere.
* **PRG**: ChaCha20's keystream, read as little-endian uint32 ring elements (``prg``): about 1 GB/s.
* **Fixed point**: ``quantise`` clips a float vector to an L2 norm, weights it, scales and rounds it
  into Z_2^32 and appends the weight; ``dequantise`` turns a sum of such vectors back into the
  weighted mean. ``choose_scale`` picks the largest scale for which the sum of ``parties`` vectors
  cannot wrap around, so the sum is exact in the ring and the only error is the rounding:
  at most ``parties / (2 * scale)`` per coordinate of the weighted sum (``mean_error_bound``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from collections.abc import Iterable

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PRIME = 2**521 - 1
SECRET_BYTES = 32
RING = np.uint32
RING_MODULUS = 2**32
_RAW = serialization.Encoding.Raw
_NONCE = 12


class MaskingError(ValueError):
    """A share, key or vector that does not fit the protocol."""


# -- Shamir over GF(p) -----------------------------------------------------------------------------
def split(secret: bytes, threshold: int, xs: Iterable[int]) -> dict[int, int]:
    """Shares of ``secret`` at the points ``xs`` (distinct, 1..p-1): any ``threshold`` recover it, fewer
    reveal nothing about it."""
    points = list(xs)
    if len(set(points)) != len(points) or not all(0 < x < PRIME for x in points):
        raise MaskingError("share points must be distinct and non-zero")
    if not 1 <= threshold <= len(points):
        raise MaskingError(f"a threshold of {threshold} with {len(points)} shares")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in points:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y
    return shares


def combine(shares: dict[int, int], size: int = SECRET_BYTES) -> bytes:
    """The secret from ``shares`` (x -> y; at least the threshold of them), by Lagrange at 0."""
    if not shares:
        raise MaskingError("no shares")
    secret = 0
    for xi, yi in shares.items():
        num, den = 1, 1
        for xj in shares:
            if xj != xi:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * size):
        raise MaskingError("the shares do not combine into a secret (too few, or inconsistent)")
    return secret.to_bytes(size, "big")


# -- keys ------------------------------------------------------------------------------------------
def new_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def public_of(private: bytes) -> bytes:
    return public_bytes(X25519PrivateKey.from_private_bytes(private))


def agree(private: bytes, public: bytes, label: str) -> bytes:
    """A 32-byte key both ends of an X25519 pair derive alike, for the purpose ``label``."""
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise MaskingError(f"key agreement failed: {exc}") from None
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"fedmq-secagg {label}".encode()).derive(shared)


def commit(seed: bytes) -> str:
    return hashlib.sha256(b"fedmq-secagg-seed\0" + seed).hexdigest()


# -- end-to-end encryption of shares ---------------------------------------------------------------
def seal(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, context)


def unseal(key: bytes, sealed: bytes, context: bytes) -> bytes:
    from cryptography.exceptions import InvalidTag

    if len(sealed) < _NONCE + 16:
        raise MaskingError("ciphertext too short")
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], context)
    except InvalidTag:
        raise MaskingError("the ciphertext does not decrypt (forged, altered, or for someone else)") from None


# -- PRG and fixed point ---------------------------------------------------------------------------
_ZEROS_LOCK = threading.Lock()
_zeros = b""  # read-only, shared: ChaCha20 encrypts zeros into its keystream
_scratch = threading.local()  # each thread's keystream buffer, reused: a fresh 45 MB array costs more than the cipher


def _keystream(seed: bytes, length: int) -> np.ndarray:
    """ChaCha20's keystream under ``seed``, ``length`` ring elements, in this thread's scratch buffer (valid
    until its next call)."""
    global _zeros
    size = 4 * length
    with _ZEROS_LOCK:
        if len(_zeros) < size:
            _zeros = bytes(size)
        zeros = memoryview(_zeros)[:size]
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or len(buffer) < size + 64:
        buffer = _scratch.buffer = bytearray(size + 64)
    encryptor = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    encryptor.update_into(zeros, buffer)
    return np.frombuffer(buffer, dtype="<u4", count=length)


def prg(seed: bytes, length: int) -> np.ndarray:
    """``length`` pseudo-random ring elements expanded from a 32-byte ``seed`` (ChaCha20's keystream)."""
    return _keystream(seed, length).astype(RING, copy=True)


def add_prg(vector: np.ndarray, seed: bytes, sign: int) -> None:
    """``vector`` += ``sign`` * PRG(seed), in place, in the ring."""
    stream = _keystream(seed, len(vector))
    if sign > 0:
        np.add(vector, stream, out=vector)
    else:
        np.subtract(vector, stream, out=vector)


def choose_scale(parties: int, clip_norm: float) -> float:
    """The fixed-point scale: the largest for which a sum of ``parties`` clipped, weighted, rounded
    vectors has every coordinate strictly inside (-2^31, 2^31), so it never wraps around the ring."""
    return ((2**31 - 1) // parties - 1) / clip_norm


def mean_error_bound(parties: int, scale: float, weight_cap: int, total_weight: int) -> float:
    """The most the unmasked weighted mean differs from the exact weighted mean of the same clipped
    updates, per coordinate: each of ``parties`` roundings is off by at most 1/2 of a unit of 1/scale,
    and the sum is multiplied by ``weight_cap / total_weight``."""
    return parties * 0.5 / scale * weight_cap / total_weight


def clip(vector: np.ndarray, clip_norm: float) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector * (clip_norm / norm) if norm > clip_norm else vector


def quantise(vector: np.ndarray, weight: int, *, clip_norm: float, weight_cap: int, scale: float,
             consume: bool = False) -> np.ndarray:
    """``vector`` (float) clipped to ``clip_norm``, times ``weight / weight_cap`` and ``scale``, rounded into the
    ring, with ``weight`` (at most ``weight_cap``) appended as the last element. With ``consume`` a float64
    ``vector`` is worked on in place (the caller gives it up)."""
    weight = max(0, min(int(weight), weight_cap))
    x = np.asarray(vector, dtype=np.float64) if consume else np.array(vector, dtype=np.float64)
    norm = float(np.sqrt(np.dot(x, x)))
    factor = weight / weight_cap * scale * (clip_norm / norm if norm > clip_norm else 1.0)
    np.multiply(x, factor, out=x)
    np.rint(x, out=x)
    out = np.empty(len(x) + 1, dtype=RING)
    # |x| <= clip_norm * scale + 1/2 < 2^31 (choose_scale): int32 holds it; its two's complement is its ring element
    np.copyto(out[:-1].view(np.int32), x, casting="unsafe")
    out[-1] = weight
    return out


def dequantise(total: np.ndarray, *, scale: float, weight_cap: int) -> tuple[np.ndarray, int]:
    """The weighted mean (float64) and the total weight, from the unmasked sum of ``quantise``d vectors."""
    weight = int(total[-1])
    if weight <= 0:
        raise MaskingError("the unmasked weights sum to zero")
    signed = total[:-1].view(np.int32).astype(np.float64)
    return signed * (weight_cap / (scale * weight)), weight


def add_masks(vector: np.ndarray, self_seed: bytes, pairwise: Iterable[tuple[bytes, int]], *,
              consume: bool = False) -> np.ndarray:
    """``vector`` + PRG(self_seed) + sum of sign * PRG(seed) over ``pairwise`` (seed, +1 or -1), in the ring
    (in place with ``consume``)."""
    out = vector if consume else vector.copy()
    add_prg(out, self_seed, 1)
    for seed, sign in pairwise:
        add_prg(out, seed, sign)
    return out


def pair_sign(me: str, other: str) -> int:
    """The sign of the mask silo ``me`` adds for the pair (me, other): + for the smaller name, - for the larger,
    so the two cancel in the sum."""
    return 1 if me < other else -1

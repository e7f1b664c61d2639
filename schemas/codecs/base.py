"""The types every codec shares: a state dict, and the base model a delta is taken from."""

from __future__ import annotations

from typing import NamedTuple

import torch

StateDict = dict[str, torch.Tensor]


class Base(NamedTuple):
    """The global model a silo trained from: its tensors, and the digest of the payload it came in.

    Delta codecs encode ``update - base.state`` and record ``base.digest``; decoding needs the same
    base, and refuses a payload that names another one.
    """

    state: StateDict
    digest: str

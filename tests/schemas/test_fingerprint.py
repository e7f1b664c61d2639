"""Model fingerprints: what the aggregator compares to refuse a silo with another model, without its code."""

from __future__ import annotations

import torch
from fedmq.schemas import Presence, parse_header
from fedmq.schemas.fingerprint import dtype_name, fingerprint_of, first_difference
from fedmq.schemas.messages import dump_header
from torch import nn


def test_same_model_same_fingerprint_and_the_first_difference_is_named() -> None:
    job = fingerprint_of(nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)).state_dict())
    assert [(t.name, t.shape, t.dtype) for t in job[:2]] == [("0.weight", [8, 2], "float32"), ("0.bias", [8], "float32")]
    assert first_difference(job, fingerprint_of(nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)).state_dict())) is None
    wider = fingerprint_of(nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2)).state_dict())
    assert first_difference(job, wider) == "tensor '0.weight' has shape [16, 2], the job's [8, 2]"
    half = fingerprint_of(nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)).half().state_dict())
    assert first_difference(job, half) == "tensor '0.weight' is float16, the job's float32"
    assert first_difference(job, job[:3]) == "it lacks the job's tensor '2.bias' (float32 [2])"
    bigger = fingerprint_of(nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)).state_dict())
    assert first_difference(job, bigger) == "it has tensor '1.weight' (float32 [8]), which the job's model lacks"
    assert dtype_name(torch.int64) == "int64"


def test_a_fingerprint_travels_in_the_presence() -> None:
    prints = fingerprint_of(nn.Conv2d(3, 4, 3).state_dict())
    presence = Presence(job="j", silo="s", online=True, task="segmentation", run_id="r", fingerprint=prints)
    again = parse_header(dump_header(presence))
    assert again == presence and again.fingerprint[0].shape == [4, 3, 3, 3]

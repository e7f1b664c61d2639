"""The lossy update codecs: their error bounds, which tensors they leave exact, unbiased rounding,
and that a delta is only ever added to the base it was taken from."""

from __future__ import annotations

import math

import pytest
import torch
from fedmq.aggregator.checks import check_tensors
from fedmq.errors import ProtocolError, UpdateRejected
from fedmq.schemas.codec import DELTA_CODECS, Base, decode_state, encode_state, raw_size
from fedmq.schemas.codecs.delta import MIN_LOSSY_NUMEL, topk_count
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BIG = 1 << 30
DIGEST = "d" * 64


def model_pair(seed: int = 0, step: float = 1e-3) -> tuple[dict[str, torch.Tensor], Base]:
    """A base model and an update of it, like one round of local training: small changes to every weight."""
    g = torch.Generator().manual_seed(seed)
    base = {"conv.weight": torch.randn(16, 8, 3, 3, generator=g) * 0.1, "fc.weight": torch.randn(64, 128, generator=g) * 0.05,
            "fc.bias": torch.randn(64, generator=g) * 0.01, "bn.running_var": torch.rand(64, generator=g) + 0.5,
            "bn.num_batches_tracked": torch.tensor(7), "half": torch.randn(40, 40, generator=g).half(),
            "double": torch.randn(1500, generator=g).double()}
    update = {k: (v + torch.randn(v.shape, generator=g).to(v.dtype) * step) if v.is_floating_point() else v + 3
              for k, v in base.items()}
    return update, Base(base, DIGEST)


def round_trip(update: dict, base: Base, codec: str, seed: int = 0) -> dict[str, torch.Tensor]:
    return decode_state(encode_state(update, codec, base=base, seed=seed), codec, BIG, base=base)


def lossy_names(update: dict) -> list[str]:
    return [k for k, v in update.items() if v.is_floating_point() and v.numel() >= MIN_LOSSY_NUMEL]


@pytest.mark.parametrize("codec", DELTA_CODECS)
def test_decoded_update_has_the_models_names_dtypes_and_shapes(codec: str) -> None:
    update, base = model_pair()
    decoded = round_trip(update, base, codec)
    check_tensors(decoded, base.state)  # what the aggregator asks of every update
    for name, t in decoded.items():
        assert t.is_contiguous() and t.device.type == "cpu"
        if name not in lossy_names(update):  # integer buffers and small tensors go whole, exactly
            assert torch.equal(t, update[name]), name


def test_fp16_relative_error() -> None:
    update, base = model_pair()
    decoded = round_trip(update, base, "delta-fp16")
    for name in lossy_names(update):
        delta = update[name].double() - base.state[name].double()
        err = (decoded[name].double() - update[name].double()).abs()
        # float16 keeps 11 significant bits (deltas under 2**-14 are subnormal: an absolute 2**-25); forming
        # and adding the delta in float32 (or the tensor's own precision for float16) rounds once more.
        own_eps = torch.finfo(update[name].dtype).eps
        normal = delta.abs() >= 2**-14
        assert bool((err <= delta.abs() * 2**-11 + update[name].double().abs() * own_eps + 2**-25).all()), name
        assert bool((err[normal] <= delta.abs()[normal] * 2**-11 + update[name].double().abs()[normal] * own_eps).all())


def test_int8_error_is_below_the_scale() -> None:
    update, base = model_pair()
    decoded = round_trip(update, base, "delta-int8", seed=5)
    for name in lossy_names(update):
        delta = update[name].double() - base.state[name].double()
        scale = float(delta.abs().max()) / 127
        err = (decoded[name].double() - update[name].double()).abs()
        own_eps = torch.finfo(update[name].dtype).eps
        assert float(err.max()) <= scale * (1 + 1e-5) + float(update[name].double().abs().max()) * own_eps, name
        assert float(err.max()) > 0  # it is lossy


def test_int8_stochastic_rounding_is_unbiased() -> None:
    """Every delta sits a quarter of a level above zero: rounding to nearest would send 0 (a bias of
    a quarter level everywhere); stochastic rounding sends 1 a quarter of the time."""
    n = 4096
    base = Base({"w": torch.zeros(n)}, DIGEST)
    delta = torch.full((n,), 0.25)
    delta[0] = 127.0  # scale = 1: the level spacing
    update = {"w": delta}
    runs = 200
    mean = sum(round_trip(update, base, "delta-int8", seed=s)["w"][1:].double() for s in range(runs)) / runs
    # Each estimate is 0 or 1 with p = 0.25: the mean of n*runs of them is 0.25 within a few standard errors.
    assert abs(float(mean.mean()) - 0.25) < 4 * math.sqrt(0.25 * 0.75 / ((n - 1) * runs))
    # And per value, over the seeds (std sqrt(3/16/200) = 0.031): no value is stuck at 0 or 1.
    assert float((mean - 0.25).abs().max()) < 0.2


def test_int8_is_seeded_per_update() -> None:
    update, base = model_pair()
    assert encode_state(update, "delta-int8", base=base, seed=1) == encode_state(update, "delta-int8", base=base, seed=1)
    assert encode_state(update, "delta-int8", base=base, seed=1) != encode_state(update, "delta-int8", base=base, seed=2)
    for codec in ("delta-fp16", "delta-topk"):  # deterministic whatever the seed
        assert encode_state(update, codec, base=base, seed=1) == encode_state(update, codec, base=base, seed=2)


def test_topk_keeps_the_k_largest_changes() -> None:
    update, base = model_pair()
    decoded = round_trip(update, base, "delta-topk")
    for name in lossy_names(update):
        delta = (update[name].double() - base.state[name].double()).reshape(-1)
        changed = (decoded[name].double() - base.state[name].double()).reshape(-1) != 0
        k = topk_count(delta.numel())
        assert k == math.ceil(delta.numel() / 100)
        assert int(changed.sum()) == k, name
        kept = delta.abs()[changed]
        assert float(kept.min()) >= float(delta.abs()[~changed].max()), name  # the largest by magnitude
        got = (decoded[name].double() - base.state[name].double()).reshape(-1)[changed]
        own_eps = torch.finfo(update[name].dtype).eps
        tol = delta[changed].abs() * 2**-11 + update[name].double().reshape(-1)[changed].abs() * own_eps + 2**-25
        assert bool(((got - delta[changed]).abs() <= tol).all()), name


def topk_rounds(rounds: int, residual: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of what was sent, sum of the true changes) over ``rounds`` delta-topk updates of a
    4096-value tensor: each round the same small push per value, plus a few large random changes."""
    g = torch.Generator().manual_seed(0)
    n = 4096
    steady = 1e-3 * (1 + 0.1 * torch.rand(n, generator=g))
    weights, sent, true = torch.zeros(n), torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for r in range(rounds):
        change = steady + torch.randn(n, generator=g) * 1e-2 * (torch.rand(n, generator=g) < 0.005)
        base = Base({"w": weights.clone()}, f"{r:064x}")
        payload = encode_state({"w": weights + change}, "delta-topk", base=base, residual=residual)
        decoded = decode_state(payload, "delta-topk", BIG, base=base)["w"]
        sent += decoded.double() - weights.double()
        true += change.double()
        weights = decoded  # the next round trains from the new global model
    return sent, true


def test_topk_error_feedback_sends_every_change_eventually() -> None:
    """With a residual kept between updates, what was sent plus what is held adds up to every change
    made, and the steady small changes take turns getting through; without it, the same few values
    (the largest steady pushes) are sent every round and most of the change is lost."""
    residual: dict[str, torch.Tensor] = {}
    sent, true = topk_rounds(30, residual)
    assert float((sent + residual["w"].double() - true).abs().max()) < 1e-4
    moved = float((sent != 0).double().mean())
    assert moved > 0.25, moved  # at most 30 rounds x 41 values of 4096 can move: 0.30
    sent_plain, _ = topk_rounds(30, None)
    assert float(sent.sum() / true.sum()) > 10 * float(sent_plain.sum() / true.sum())


def test_topk_residual_is_dropped_for_tensors_sent_whole() -> None:
    update, base = model_pair()
    residual = {"fc.weight": torch.ones(64 * 128), "fc.bias": torch.ones(64)}
    encode_state(update, "delta-topk", base=base, residual=residual)
    assert set(residual) == {"conv.weight", "fc.weight", "double", "half"}  # the lossy ones, fc.bias went whole
    before = {k: v.clone() for k, v in residual.items()}
    for codec in ("delta-fp16", "delta-int8", "shuffle+zstd"):  # other codecs leave it alone
        encode_state(update, codec, base=base, residual=residual)
    assert all(torch.equal(before[k], residual[k]) for k in before)


def test_lossy_codecs_are_smaller() -> None:
    """On a model-like update; the README's figures are on trained models (benchmarks/wire_size.py)."""
    update, base = model_pair()
    raw = raw_size(update)
    sizes = {codec: len(encode_state(update, codec, base=base)) / raw for codec in ("shuffle+zstd", *DELTA_CODECS)}
    assert sizes["delta-topk"] < sizes["delta-int8"] < 0.3 < sizes["delta-fp16"] < sizes["shuffle+zstd"]


@pytest.mark.parametrize("codec", DELTA_CODECS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_updates_reach_the_aggregators_checks(codec: str, bad: float) -> None:
    update, base = model_pair()
    update["fc.weight"][3, 4] = bad
    decoded = round_trip(update, base, codec)
    assert torch.equal(decoded["fc.weight"].isnan(), update["fc.weight"].isnan())
    assert bool((decoded["fc.weight"] == update["fc.weight"]).sum()) or math.isnan(bad)
    with pytest.raises(UpdateRejected, match="NaN or infinite"):
        check_tensors(decoded, base.state)


@pytest.mark.parametrize("codec", ["delta-fp16", "delta-topk"])
def test_a_delta_past_float16s_range_goes_whole(codec: str) -> None:
    update, base = model_pair()
    update["fc.weight"][0, 0] = 1e6
    decoded = round_trip(update, base, codec)
    assert torch.equal(decoded["fc.weight"], update["fc.weight"])


def test_tensors_the_base_lacks_or_shapes_differently_go_whole() -> None:
    update, base = model_pair()
    update["extra"] = torch.randn(4096)
    update["fc.weight"] = torch.randn(128, 64)
    for codec in DELTA_CODECS:
        decoded = round_trip(update, base, codec)
        assert torch.equal(decoded["extra"], update["extra"]) and torch.equal(decoded["fc.weight"], update["fc.weight"])


@pytest.mark.parametrize("codec", DELTA_CODECS)
def test_wrong_base_is_a_clear_error(codec: str) -> None:
    update, base = model_pair()
    payload = encode_state(update, codec, base=base)
    with pytest.raises(ProtocolError, match=f"encoded against base model {DIGEST[:12]}, not {'e' * 12}"):
        decode_state(payload, codec, BIG, base=Base(base.state, "e" * 64))
    with pytest.raises(ProtocolError, match="no such tensor"):
        decode_state(payload, codec, BIG, base=Base({k: v for k, v in base.state.items() if k != "fc.weight"}, DIGEST))
    with pytest.raises(ProtocolError, match="the base model's is"):
        decode_state(payload, codec, BIG, base=Base({**base.state, "fc.weight": torch.zeros(128, 64)}, DIGEST))
    with pytest.raises(ProtocolError, match="the base model's is"):
        decode_state(payload, codec, BIG, base=Base({**base.state, "fc.weight": base.state["fc.weight"].double()}, DIGEST))
    with pytest.raises(ProtocolError, match="difference from the global model"):
        decode_state(payload, codec, BIG)


@pytest.mark.parametrize("codec", DELTA_CODECS)
def test_decoding_leaves_the_base_alone(codec: str) -> None:
    update, base = model_pair()
    before = {k: v.clone() for k, v in base.state.items()}
    decoded = round_trip(update, base, codec)
    decoded["fc.weight"].add_(1)
    assert all(torch.equal(base.state[k], before[k]) for k in before)


@pytest.mark.parametrize("codec", DELTA_CODECS)
def test_truncated_delta_payloads_refused(codec: str) -> None:
    update, base = model_pair()
    payload = encode_state(update, codec, base=base, seed=3)
    for cut in range(0, len(payload), max(1, len(payload) // 40)):
        with pytest.raises(ProtocolError):
            decode_state(payload[:cut], codec, BIG, base=base)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(scale=st.floats(1e-30, 1e4), n=st.integers(MIN_LOSSY_NUMEL, 3000), seed=st.integers(0, 2**63 - 1),
       codec=st.sampled_from(DELTA_CODECS))
def test_error_bounds_property(scale: float, n: int, seed: int, codec: str) -> None:
    g = torch.Generator().manual_seed(seed % 1000)
    base = Base({"w": torch.randn(n, generator=g)}, DIGEST)
    update = {"w": base.state["w"] + torch.randn(n, generator=g) * scale}
    decoded = round_trip(update, base, codec, seed=seed)["w"].double()
    delta = update["w"].double() - base.state["w"].double()
    err = (decoded - update["w"].double()).abs()
    slack = update["w"].double().abs() * 2**-23 + 1e-300
    if codec == "delta-int8":
        assert bool((err <= float(delta.abs().max()) / 127 * (1 + 1e-5) + slack).all())
    elif codec == "delta-fp16":
        # Deltas in float16's normal range keep 11 bits; the subnormal ones an absolute 2**-25.
        assert bool((err <= delta.abs() * 2**-11 + 2**-25 + slack).all())
    else:
        k = topk_count(n)
        assert int((decoded != base.state["w"].double()).sum()) <= k
        assert float(err.max()) <= float(delta.abs().max()) * (1 + 2**-11) + float(slack.max())

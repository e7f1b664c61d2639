"""The aggregation strategies on real tensors: means, robust combiners, clipping, server optimisers, DP."""

from __future__ import annotations

import math

import pytest
import torch
from fedmq.aggregator.strategies import (
    STRATEGY_NAMES,
    DeltaStrategy,
    FedAdam,
    Krum,
    Median,
    PrivacyAccountant,
    StrategyOptions,
    TrimmedMean,
    WeightedMean,
    make_strategy,
)
from fedmq.aggregator.strategies.tensors import clip_, l2_norm, split_delta
from fedmq.errors import ConfigError, UpdateRejected
from hypothesis import given, settings
from hypothesis import strategies as st

SHAPES = {"a": (3,), "b": (2, 2)}
WIDTH = sum(math.prod(s) for s in SHAPES.values())


def _state(values: list[float], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    flat = torch.tensor(values, dtype=torch.float64)
    out, start = {}, 0
    for name, shape in SHAPES.items():
        size = math.prod(shape)
        out[name] = flat[start:start + size].reshape(shape).to(dtype)
        start += size
    return out


def _bn_state(value: float, batches: int) -> dict[str, torch.Tensor]:
    return {
        "w": torch.full((3, 2), value),
        "half": torch.full((4,), value, dtype=torch.float16),
        "bn.running_var": torch.full((2,), 1.0 + value),
        "bn.num_batches_tracked": torch.tensor(batches, dtype=torch.int64),
    }


def _run(strategy, global_state, updates, weights=None, silos=None, sample_rate: float = 1.0) -> dict[str, torch.Tensor]:
    strategy.begin(global_state, sample_rate=sample_rate)
    for i, update in enumerate(updates):
        strategy.add(update, 1.0 if weights is None else weights[i], silo=silos[i] if silos else f"s{i}")
    return strategy.result()


def _named(name: str, **kwargs: object) -> DeltaStrategy:
    return make_strategy(StrategyOptions(name=name, **kwargs))


values = st.lists(st.floats(-1e3, 1e3), min_size=WIDTH, max_size=WIDTH)
integer_values = st.lists(st.integers(-100, 100).map(float), min_size=WIDTH, max_size=WIDTH)


# -- fedavg -------------------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(values, st.lists(st.tuples(values, st.integers(1, 10_000)), min_size=1, max_size=12))
def test_fedavg_is_the_exact_weighted_mean(global_values: list[float], updates: list[tuple[list[float], int]]) -> None:
    out = _run(_named("fedavg"), _state(global_values), [_state(v) for v, _ in updates], [w for _, w in updates])
    states = [(_state(v), w) for v, w in updates]  # the float32 inputs, as the aggregator sees them
    total = sum(w for _, w in updates)
    for name in SHAPES:
        expected = sum(state[name].double() * w for state, w in states) / total
        assert torch.allclose(out[name].double(), expected, rtol=1e-5, atol=1e-3), name


def test_fedavg_keeps_dtypes_and_rounds_integer_buffers() -> None:
    out = _run(_named("fedavg"), _bn_state(0.0, 0), [_bn_state(1.0, 10), _bn_state(4.0, 20)], [1, 3])
    assert torch.allclose(out["w"], torch.full((3, 2), 3.25))
    assert out["half"].dtype == torch.float16 and torch.allclose(out["half"].float(), torch.full((4,), 3.25))
    assert out["bn.num_batches_tracked"].dtype == torch.int64
    assert out["bn.num_batches_tracked"].item() == 18  # round(17.5), ties to even


def test_fedavg_writes_into_no_input() -> None:
    global_state, first = _bn_state(0.0, 0), _bn_state(1.0, 1)
    _run(_named("fedavg"), global_state, [first, _bn_state(3.0, 1)])
    assert torch.equal(first["w"], torch.ones(3, 2)) and torch.equal(global_state["w"], torch.zeros(3, 2))


def test_the_delta_is_taken_from_the_base_the_silo_trained_on() -> None:
    strategy = _named("fedavg")
    strategy.begin({"w": torch.full((2,), 10.0)})
    strategy.add({"w": torch.full((2,), 4.0)}, 1.0, base={"w": torch.full((2,), 3.0)})
    assert torch.allclose(strategy.result()["w"], torch.full((2,), 11.0))


def test_fedprox_aggregates_like_fedavg_and_server_lr_scales_the_step() -> None:
    updates = [_bn_state(1.0, 4), _bn_state(2.0, 6)]
    assert all(torch.equal(a, b) for a, b in zip(_run(_named("fedprox"), _bn_state(0.0, 0), updates).values(),
                                                 _run(_named("fedavg"), _bn_state(0.0, 0), updates).values()))
    half = _run(_named("fedavg", server_lr=0.5), _bn_state(0.0, 0), updates)
    assert torch.allclose(half["w"], torch.full((3, 2), 0.75))
    assert half["bn.num_batches_tracked"].item() == 5, "integer buffers take the mean delta, unscaled"


def test_result_needs_an_update_and_weights_must_be_positive() -> None:
    strategy = _named("median")
    strategy.begin({"w": torch.zeros(2)})
    with pytest.raises(RuntimeError):
        strategy.result()
    with pytest.raises(ValueError):
        strategy.add({"w": torch.ones(2)}, 0.0)


# -- robust combiners ---------------------------------------------------------------------------------------
ROBUST = [("median", {}), ("trimmed-mean", {"trim": 0.2}), ("krum", {}), ("multi-krum", {})]


@pytest.mark.parametrize(("name", "kwargs"), ROBUST)
@settings(max_examples=60, deadline=None)
@given(global_values=integer_values, updates=st.lists(integer_values, min_size=1, max_size=9), shift=integer_values)
def test_robust_combiners_are_translation_equivariant(name: str, kwargs: dict, global_values: list[float],
                                                      updates: list[list[float]], shift: list[float]) -> None:
    g = _state(global_values, torch.float64)
    plain = _run(_named(name, **kwargs), g, [_state(u, torch.float64) for u in updates])
    moved = _run(_named(name, **kwargs), g, [_state([a + b for a, b in zip(u, shift)], torch.float64) for u in updates])
    for key, offset in _state(shift, torch.float64).items():
        assert torch.allclose(moved[key], plain[key] + offset, atol=1e-9), key


def _honest_and_byzantine() -> tuple[dict, list[dict], list[float], list[str], torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    honest = [{"w": 1.0 + 0.01 * torch.randn(50, generator=gen)} for _ in range(4)]
    byzantine = {"w": torch.full((50,), 1e6)}
    honest_mean = torch.stack([u["w"] for u in honest]).mean(0)
    return {"w": torch.zeros(50)}, [*honest, byzantine], [10.0, 10.0, 10.0, 10.0, 1e9], ["h1", "h2", "h3", "h4", "byz"], \
        honest_mean


@pytest.mark.parametrize(("name", "kwargs"), ROBUST)
def test_robust_combiners_resist_one_byzantine_update(name: str, kwargs: dict) -> None:
    global_state, updates, weights, silos, honest_mean = _honest_and_byzantine()
    out = _run(_named(name, **kwargs), global_state, updates, weights, silos)
    assert (out["w"] - honest_mean).abs().max() < 0.05


def test_fedavg_does_not_resist_a_byzantine_update() -> None:
    global_state, updates, weights, silos, honest_mean = _honest_and_byzantine()
    out = _run(_named("fedavg"), global_state, updates, weights, silos)
    assert (out["w"] - honest_mean).abs().max() > 1e3


def test_krum_selects_an_honest_silo_and_multi_krum_only_honest_ones() -> None:
    global_state, updates, weights, silos, _ = _honest_and_byzantine()
    krum = _named("krum")
    _run(krum, global_state, updates, weights, silos)
    report = krum.report()
    assert report["krum_f"] == 1 and len(report["selected"]) == 1 and report["selected"][0] != "byz"
    multi = _named("multi-krum")
    _run(multi, global_state, updates, weights, silos)
    assert sorted(multi.report()["selected"]) == ["h1", "h2", "h3", "h4"]
    two = _named("multi-krum", krum_m=2)
    _run(two, global_state, updates, weights, silos)
    assert len(two.report()["selected"]) == 2


def test_krum_lowers_an_f_the_round_cannot_hold() -> None:
    strategy = _named("krum", krum_f=3)
    _run(strategy, {"w": torch.zeros(2)}, [{"w": torch.full((2,), float(i))} for i in range(5)])
    assert strategy.report()["krum_f"] == 1
    assert StrategyOptions(name="krum", krum_f=3).min_updates == 9


def test_median_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    out = _run(_named("median"), {"w": torch.zeros(1)}, [{"w": torch.tensor([v])} for v in (1.0, 2.0, 10.0, 100.0)])
    assert out["w"].item() == 6.0


def test_trimmed_mean_cuts_floor_trim_n_per_side_and_reports_it() -> None:
    strategy = _named("trimmed-mean", trim=0.25)
    out = _run(strategy, {"w": torch.zeros(1)}, [{"w": torch.tensor([v])} for v in (0.0, 1.0, 2.0, 3.0, 4.0, 100.0)])
    assert strategy.report()["trimmed_per_side"] == 1 and out["w"].item() == 2.5
    assert _run(_named("trimmed-mean", trim=0.0), {"w": torch.zeros(1)},
                [{"w": torch.tensor([v])} for v in (0.0, 3.0)], [1.0, 100.0])["w"].item() == 1.5, "unweighted"


def test_streaming_flags() -> None:
    streaming = {name: _named(name).streaming for name in STRATEGY_NAMES}
    assert streaming == {"fedavg": True, "fedprox": True, "median": False, "trimmed-mean": False, "krum": False,
                         "multi-krum": False, "fedadam": True, "fedyogi": True, "fedadagrad": True}
    assert _named("fedavg", dp_clip=1.0, dp_noise=1.0).streaming


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_strategy_returns_the_global_dtypes(name: str) -> None:
    out = _run(_named(name), _bn_state(0.0, 0), [_bn_state(float(i), 10 * i) for i in range(1, 6)], [1, 1, 1, 1, 4])
    assert {k: v.dtype for k, v in out.items()} == {k: v.dtype for k, v in _bn_state(0.0, 0).items()}
    assert out["bn.num_batches_tracked"].item() == 38  # the weighted mean (10+20+30+40+200)/8 = 37.5, rounded
    assert all(torch.isfinite(v.float()).all() for v in out.values())


# -- clipping -----------------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(values, st.floats(1e-3, 1e3))
def test_clip_bounds_the_norm_and_keeps_the_direction(update: list[float], limit: float) -> None:
    delta = _state(update)
    before = l2_norm(delta)
    original = {k: v.clone() for k, v in delta.items()}
    clipped = clip_(delta, limit)
    assert l2_norm(delta) <= limit * (1 + 1e-5) + 1e-12
    assert clipped == (before > limit)
    if not clipped:
        assert all(torch.equal(delta[k], original[k]) for k in delta)
    elif before > 0:
        for k in delta:
            assert torch.allclose(delta[k] * before / limit, original[k], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", ["fedavg", "median", "krum", "trimmed-mean"])
def test_clip_norm_applies_to_each_update_and_is_reported(name: str) -> None:
    strategy = _named(name, clip_norm=1.0)
    updates = [{"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([0.3, 0.4])}, {"w": torch.tensor([30.0, 40.0])}]
    out = _run(strategy, {"w": torch.zeros(2)}, updates)
    assert strategy.report()["clipped"] == 2
    assert torch.linalg.vector_norm(out["w"]) <= 1.0 + 1e-6


# -- server optimisers --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_steps_follow_the_mean_delta(name: str) -> None:
    global_state = {"w": torch.zeros(4), "n": torch.tensor(0)}
    updates = [{"w": torch.tensor([1.0, -2.0, 0.5, -0.1]), "n": torch.tensor(3)},
               {"w": torch.tensor([3.0, -1.0, 0.1, -0.3]), "n": torch.tensor(5)}]
    out = _run(_named(name), global_state, updates)
    assert torch.equal(torch.sign(out["w"]), torch.tensor([1.0, -1.0, 1.0, -1.0]))
    assert out["n"].item() == 4


def test_fedadam_matches_the_paper_and_keeps_its_state_across_rounds() -> None:
    strategy = _named("fedadam", server_lr=0.1)
    d = torch.tensor([2.0, -0.5])
    first = _run(strategy, {"w": torch.zeros(2)}, [{"w": d}])["w"]
    m, v = 0.1 * d, 0.99 * 1e-6 + 0.01 * d * d
    assert torch.allclose(first, 0.1 * m / (v.sqrt() + 1e-3))
    second = _run(strategy, {"w": first}, [{"w": first + d}])["w"] - first
    m, v = 0.9 * m + 0.1 * d, 0.99 * v + 0.01 * d * d
    assert torch.allclose(second, 0.1 * m / (v.sqrt() + 1e-3))
    assert (second.abs() > first.abs()).all(), "momentum carried over from the first round"
    fresh = _run(_named("fedadam", server_lr=0.1), {"w": torch.zeros(2)}, [{"w": d}])["w"]
    assert torch.allclose(fresh, first)


def test_fedadam_defaults() -> None:
    server = make_strategy(StrategyOptions(name="fedadam")).server
    assert isinstance(server, FedAdam)
    assert (server.lr, server.beta1, server.beta2, server.tau) == (1e-2, 0.9, 0.99, 1e-3)


# -- differential privacy -----------------------------------------------------------------------------------
def test_dp_without_noise_is_the_unweighted_clipped_mean() -> None:
    strategy = _named("fedavg", dp_clip=1.0, dp_noise=0.0, seed=0)
    updates = [{"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([0.3, 0.4])}, {"w": torch.tensor([0.0, -10.0])}]
    out = _run(strategy, {"w": torch.zeros(2)}, updates, weights=[1.0, 50.0, 7.0])
    expected = (torch.tensor([0.6, 0.8]) + torch.tensor([0.3, 0.4]) + torch.tensor([0.0, -1.0])) / 3
    assert torch.allclose(out["w"], expected, atol=1e-6)
    report = strategy.report()
    assert report["clipped"] == 2 and report["dp_noise_std"] == 0.0 and report["dp_epsilon"] == math.inf


def test_dp_noise_has_std_z_c_over_n() -> None:
    z, c, n, size = 1.5, 2.0, 4, 400_000
    strategy = _named("fedavg", dp_clip=c, dp_noise=z, seed=7)
    out = _run(strategy, {"w": torch.zeros(size)}, [{"w": torch.zeros(size)} for _ in range(n)])["w"].double()
    expected = z * c / n
    assert strategy.report()["dp_noise_std"] == pytest.approx(expected)
    assert out.std().item() == pytest.approx(expected, rel=0.01)  # std of a 400k sample: ~0.1% relative error
    assert abs(out.mean().item()) < 5 * expected / math.sqrt(size)


def test_dp_noise_is_reproducible_with_a_seed() -> None:
    def noise(seed: int) -> torch.Tensor:
        return _run(_named("fedavg", dp_clip=1.0, dp_noise=1.0, seed=seed), {"w": torch.zeros(100)},
                    [{"w": torch.zeros(100)}])["w"]

    assert torch.equal(noise(3), noise(3)) and not torch.equal(noise(3), noise(4))


def test_dp_counts_one_update_per_silo() -> None:
    strategy = _named("fedavg", dp_clip=1.0, dp_noise=1.0, seed=0)
    strategy.begin({"w": torch.zeros(2)})
    strategy.add({"w": torch.ones(2)}, 1.0, silo="a")
    with pytest.raises(UpdateRejected):
        strategy.add({"w": torch.ones(2)}, 1.0, silo="a")
    strategy.add({"w": torch.ones(2)}, 1.0, silo="b")
    strategy.result()
    assert strategy.report()["updates"] == 2


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    def epsilons(z: float, rounds: int, q: float = 1.0) -> list[float]:
        strategy = _named("fedadam", dp_clip=1.0, dp_noise=z, seed=0)
        out = []
        for _ in range(rounds):
            _run(strategy, {"w": torch.zeros(2)}, [{"w": torch.ones(2)}], sample_rate=q)
            out.append(strategy.report()["dp_epsilon"])
        return out

    low_noise = epsilons(1.0, 5)
    assert all(a < b for a, b in zip(low_noise, low_noise[1:]))
    assert epsilons(2.0, 5)[-1] < low_noise[-1]
    assert epsilons(1.0, 5, q=0.2)[-1] < low_noise[-1], "sampling amplifies privacy"


def _classic_rdp_epsilon(z: float, rounds: int, delta: float) -> float:
    """eps = min over alpha of T * alpha / (2 z^2) + log(1 / delta) / (alpha - 1), the Gaussian mechanism at q = 1."""
    return min(rounds * a / (2 * z * z) + math.log(1 / delta) / (a - 1) for a in [1 + i / 100 for i in range(1, 100_000)])


@pytest.mark.parametrize(("z", "rounds"), [(1.0, 1), (1.0, 10), (3.0, 50)])
def test_accountant_at_q1_is_the_gaussian_rdp_bound(z: float, rounds: int) -> None:
    accountant = PrivacyAccountant(z, 1e-5)
    report = {}
    for _ in range(rounds):
        report = accountant.spend()
    classic = _classic_rdp_epsilon(z, rounds, 1e-5)
    assert 0.7 * classic < report["dp_epsilon"] <= classic * 1.001  # the library converts a little more tightly
    assert report["dp_rounds"] == rounds and report["dp_round_epsilon"] <= report["dp_epsilon"]


# -- options ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {"name": "fedsgd"},
    {"name": "trimmed-mean", "trim": 0.5},
    {"name": "trimmed-mean", "trim": -0.1},
    {"name": "median", "trim": 0.1},
    {"name": "krum", "krum_f": -1},
    {"name": "krum", "krum_m": 2},
    {"name": "multi-krum", "krum_m": 0},
    {"name": "fedavg", "krum_f": 1},
    {"name": "fedavg", "clip_norm": 0.0},
    {"name": "fedavg", "clip_norm": float("nan")},
    {"name": "fedadam", "server_lr": -1.0},
    {"name": "fedavg", "beta1": 0.9},
    {"name": "fedadagrad", "beta2": 0.99},
    {"name": "fedyogi", "beta2": 1.0},
    {"name": "fedadam", "tau": 0.0},
    {"name": "fedavg", "dp_clip": 1.0},
    {"name": "fedavg", "dp_noise": 1.0},
    {"name": "fedavg", "dp_clip": -1.0, "dp_noise": 1.0},
    {"name": "fedavg", "dp_clip": 1.0, "dp_noise": -1.0},
    {"name": "fedavg", "dp_clip": 1.0, "dp_noise": 1.0, "dp_delta": 1.0},
    {"name": "fedavg", "dp_delta": 1e-5},
    {"name": "median", "dp_clip": 1.0, "dp_noise": 1.0},
    {"name": "fedavg", "dp_clip": 1.0, "dp_noise": 1.0, "clip_norm": 1.0},
])
def test_invalid_options_raise_config_error_with_a_hint(kwargs: dict) -> None:
    with pytest.raises(ConfigError) as error:
        make_strategy(StrategyOptions(**kwargs))
    assert error.value.hint


def test_the_building_blocks_check_their_own_arguments() -> None:
    with pytest.raises(ValueError):
        TrimmedMean(0.5)
    with pytest.raises(ValueError):
        Krum(1, m=2)
    assert isinstance(make_strategy().combiner, WeightedMean) and isinstance(_named("median").combiner, Median)


def test_adaptive_steps_average_batchnorm_statistics_instead_of_optimising_them() -> None:
    from fedmq.aggregator.strategies import StrategyOptions, make_strategy

    global_state = {"bn.running_var": torch.full((4,), 0.01), "w": torch.zeros(4)}
    strategy = make_strategy(StrategyOptions(name="fedadam"))
    strategy.begin(global_state)
    strategy.add({"bn.running_var": torch.full((4,), 0.002), "w": torch.ones(4)}, 1.0)
    out = strategy.result()
    assert torch.allclose(out["bn.running_var"], torch.full((4,), 0.002)), "the mean, not an Adam step below zero"
    assert (out["w"] > 0).all() and (out["w"] < 1).all(), "parameters take the adaptive step"


def test_a_stale_update_cannot_drive_a_running_variance_negative() -> None:
    from fedmq.aggregator.strategies import StrategyOptions, make_strategy

    base = {"bn.running_var": torch.full((3,), 2.0), "w": torch.zeros(3)}  # the version the silo trained from
    now = {"bn.running_var": torch.full((3,), 0.5), "w": torch.ones(3)}  # the global model has moved on
    strategy = make_strategy(StrategyOptions())
    strategy.begin(now)
    strategy.add({"bn.running_var": torch.full((3,), 0.3), "w": torch.full((3,), 0.5)}, 1.0, base=base)
    out = strategy.result()
    assert torch.allclose(out["bn.running_var"], torch.full((3,), 0.3)), "statistics are averaged as values"
    assert torch.allclose(out["w"], torch.full((3,), 1.5)), "parameters move by the delta from their base"


def test_a_consumed_update_gives_the_same_result_and_is_emptied() -> None:
    """The aggregator gives decoded updates up (``consume``): same deltas, and the update is released."""
    base = {"w": torch.randn(4, 3), "bn.running_var": torch.ones(3), "bn.num_batches_tracked": torch.tensor(5)}
    state = {"w": base["w"] + 1, "bn.running_var": torch.full((3,), 2.0), "bn.num_batches_tracked": torch.tensor(7)}
    kept = split_delta(dict(state), base)
    given_up = dict(state)
    taken = split_delta(given_up, base, consume=True)
    assert given_up == {}, "every tensor left the update as its delta was made"
    for expected, got in zip(kept, taken):
        assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    a, b = make_strategy(StrategyOptions()), make_strategy(StrategyOptions())
    for strategy, consume in ((a, False), (b, True)):
        strategy.begin(base)
        strategy.add(dict(state), 2.0, consume=consume)
        strategy.add({k: v * 3 for k, v in state.items()}, 1.0, consume=consume)
    assert all(torch.equal(a.result()[k], b.result()[k]) for k in base)


def test_resume_replays_the_private_rounds_with_their_recorded_noise() -> None:
    from fedmq.aggregator.strategies import PrivacyAccountant

    strategy = make_strategy(StrategyOptions(dp_clip=1.0, dp_noise=2.0))
    earlier = [{"dp_epsilon": 1.0, "dp_noise_multiplier": 0.5}, {"accuracy": 0.5}, {"dp_epsilon": 2.0}]
    strategy.resume(earlier)  # round 2 ran without DP; round 3 predates the recorded noise: this run's 2.0
    expected = PrivacyAccountant(0.5)
    expected.spend()
    expected.noise_multiplier = 2.0
    expected.spend()
    assert strategy.accountant.rounds == 2
    assert math.isclose(strategy.accountant.epsilon, expected.epsilon, rel_tol=1e-12)
    plain = make_strategy(StrategyOptions())
    plain.resume(earlier)  # nothing to carry over without DP

"""The robust strategies' deltas on disk (aggregator/strategies/spill.py): read back exactly, in blocks
small enough to make every tensor span several, and the combiners give what they give in memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fedmq.aggregator.strategies.coordinate import Median, TrimmedMean
from fedmq.aggregator.strategies.krum import Krum
from fedmq.aggregator.strategies.spill import SpilledDeltas


def deltas(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(7, 5, generator=g), "b": torch.randn(5, generator=g),
             "d": torch.randn(3, generator=g, dtype=torch.float64), "empty": torch.zeros(0)} for _ in range(n)]


def test_deltas_come_back_exactly_a_block_at_a_time(tmp_path: Path) -> None:
    made = deltas(4)
    spill = SpilledDeltas(tmp_path, block_bytes=4 * 4 * 3)  # 3 float32 columns of 4 rows: "w" comes in 12 blocks
    for d in made:
        spill.add({k: v.clone() for k, v in d.items()})
    assert len(spill) == 4 and spill.names == ["w", "b", "d", "empty"]
    for name in ("w", "b", "d"):
        blocks = list(spill.blocks(name))
        assert len(blocks) > 1 or name == "d"
        rows = torch.cat([block for _, block in blocks], dim=1)
        assert torch.equal(rows, torch.stack([d[name].reshape(-1) for d in made]))
        assert torch.equal(spill.row(name, 2), made[2][name]) and spill.row(name, 2).dtype == made[2][name].dtype
    assert [b.shape for _, b in spill.blocks("empty")] == []
    [folder] = list(tmp_path.iterdir())
    assert sum(f.stat().st_size for f in folder.iterdir()) == 4 * (35 * 4 + 5 * 4 + 3 * 8)
    spill.clear()
    assert list(tmp_path.iterdir()) == [] and len(spill) == 0


def test_a_delta_unlike_the_rounds_first_is_refused(tmp_path: Path) -> None:
    spill = SpilledDeltas(tmp_path)
    spill.add({"w": torch.zeros(3)})
    with pytest.raises(ValueError, match="tensor w"):
        spill.add({"w": torch.zeros(4)})
    with pytest.raises(ValueError, match="other tensors"):
        spill.add({"v": torch.zeros(3)})
    assert len(spill) == 1


def test_a_crashed_runs_spilled_round_is_removed_at_the_first_round(tmp_path: Path) -> None:
    crashed = SpilledDeltas(tmp_path)
    crashed.add({"w": torch.ones(10)})  # the process died here: its folder stays
    assert len(list(tmp_path.iterdir())) == 1
    again = SpilledDeltas(tmp_path)
    again.clear()  # what a combiner's begin() does
    assert list(tmp_path.iterdir()) == []


def _in_memory_middle_mean(made: list[dict[str, torch.Tensor]], cut: int) -> dict[str, torch.Tensor]:
    n = len(made)
    return {k: torch.stack([d[k] for d in made]).sort(dim=0).values[cut:n - cut].mean(dim=0) for k in made[0]}


@pytest.mark.parametrize("n", [1, 4, 7])
def test_median_and_trimmed_mean_from_disk_equal_the_in_memory_reference(tmp_path: Path, n: int) -> None:
    made = deltas(n, seed=n)
    for combiner, cut in ((Median(str(tmp_path)), (n - 1) // 2), (TrimmedMean(0.2, str(tmp_path)), int(0.2 * n + 1e-9))):
        combiner.deltas.block_bytes = 8 * n  # two float32 columns a block
        combiner.begin()
        for i, d in enumerate(made):
            combiner.add({k: v.clone() for k, v in d.items()}, 1.0, f"s{i}")
        out = combiner.combine()
        expected = _in_memory_middle_mean(made, cut)
        assert out.keys() == expected.keys()
        for k in expected:  # the same values averaged; a block's mean may add them in another order
            assert out[k].dtype == expected[k].dtype and torch.allclose(out[k], expected[k], rtol=0, atol=1e-6), k
        assert list(tmp_path.iterdir()) == [], "the round's files go once its result is made"


@pytest.mark.parametrize("multi", [False, True])
def test_krum_from_disk_picks_and_averages_as_in_memory(tmp_path: Path, multi: bool) -> None:
    made = deltas(6, seed=3)
    made[4] = {k: v * 50 for k, v in made[4].items()}  # far from the rest: never chosen
    krum = Krum(1, multi=multi, m=3 if multi else None, spill_dir=str(tmp_path))
    krum.deltas.block_bytes = 4 * 6 * 2
    krum.begin()
    for i, d in enumerate(made):
        krum.add({k: v.clone() for k, v in d.items()}, 1.0, f"s{i}")
    out = krum.combine()
    flat = [torch.cat([d[k].reshape(-1).double() for k in d]) for d in made]
    distances = torch.stack([torch.stack([(a - b).square().sum() for b in flat]) for a in flat])
    others = distances + torch.diag(torch.full((6,), float("inf"), dtype=torch.float64))
    scores = others.sort(dim=1).values[:, :6 - 1 - 2].sum(dim=1)
    chosen = scores.argsort(stable=True)[:3 if multi else 1].tolist()
    assert krum.report()["selected"] == [f"s{i}" for i in chosen] and 4 not in chosen
    for k in made[0]:
        expected = torch.stack([made[i][k] for i in chosen]).mean(dim=0)
        assert torch.allclose(out[k], expected, atol=1e-6), k
    assert list(tmp_path.iterdir()) == []

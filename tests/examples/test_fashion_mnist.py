"""examples/fashion_mnist: the IDX reader, the reference's Dirichlet split, and a real federation that learns."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from fedmq.errors import DataError
from fedmq_fashion_mnist.data import DEFAULT_DIR, load_split
from fedmq_fashion_mnist.idx import parse_idx, read_idx
from fedmq_fashion_mnist.split import dirichlet_split

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fashion_mnist() -> Path:
    """The real data set; its absence fails the tests (CI installs it: ./dev.sh)."""
    if not (DEFAULT_DIR / "train-labels-idx1-ubyte.gz").exists():
        pytest.fail(f"Fashion-MNIST is not in {DEFAULT_DIR}: apt-get install dataset-fashion-mnist", pytrace=False)
    return DEFAULT_DIR


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def test_idx_files_read_the_same_gzipped_or_not(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "plain").write_bytes(_idx_bytes(images, 0x08))
    (tmp_path / "packed.gz").write_bytes(gzip.compress(_idx_bytes(images, 0x08)))
    assert np.array_equal(read_idx(tmp_path / "plain"), images)
    assert np.array_equal(read_idx(tmp_path / "packed.gz"), images)
    wide = np.array([[-2, 70000]], dtype=">i4")
    assert read_idx_bytes(_idx_bytes(wide, 0x0C)).tolist() == [[-2, 70000]]


def read_idx_bytes(data: bytes) -> np.ndarray:
    return parse_idx(data, "test bytes")


@pytest.mark.parametrize("data, says", [
    (b"\x1f\x8b\x08\x00", "not an IDX file"),
    (bytes([0, 0, 0x08, 1]) + (5).to_bytes(4, "big") + b"abc", "header (5,) says 13"),
    (bytes([0, 0, 0x08, 2]) + (5).to_bytes(4, "big"), "cut short"),
])
def test_damaged_idx_data_is_a_clear_error(data: bytes, says: str) -> None:
    with pytest.raises(DataError, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse_idx(data, "test bytes")


def test_the_real_files_and_the_reference_split(fashion_mnist: Path) -> None:
    train, test = load_split(fashion_mnist, "train"), load_split(fashion_mnist, "test")
    assert train.images.shape == (60_000, 28, 28) and test.images.shape == (10_000, 28, 28)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    shards = dirichlet_split(train.labels, silos=5, alpha=0.5, seed=0, min_size=100)
    # The split the published Flower figures used (issue 15): the same sizes prove the same draw.
    assert [len(s) for s in shards] == [6003, 18661, 10746, 7833, 16757]
    joined = np.concatenate(shards)
    assert len(joined) == 60_000 and len(np.unique(joined)) == 60_000
    skewed = dirichlet_split(train.labels, silos=5, alpha=0.1, seed=0, min_size=100)
    assert min(len(s) for s in skewed) >= 100 and [len(s) for s in skewed] != [len(s) for s in shards]


def test_five_silos_learn_fashion_mnist_through_fedmq(tmp_path: Path, fashion_mnist: Path, example) -> None:
    made = example.command("fedmq_fashion_mnist.silos", "--out", str(tmp_path / "D"), "--silos", "5",
                                "--alpha", "0.5", "--train-limit", "240", "--test-limit", "200")
    assert made.returncode == 0, made.stderr
    assert "6003 training images" in made.stdout  # the reference split, cut to 240 per silo only when read
    silos = [tmp_path / "D" / str(i) for i in range(5)]
    rounds = example.job("fmnist-example", silos,
                         ["--task", "fashion-mnist", "--rounds", "6", "--local-epochs", "2"],
                         ["--task", "fashion-mnist"])
    assert [r["status"] for r in rounds] == ["completed"] * 6
    assert all(r["clients"] == [f"silo{i}" for i in range(5)] for r in rounds)
    assert all({"accuracy", "loss", "macro_f1"} <= set(r["metrics"]) for r in rounds)  # the task's own metric, every round
    accuracy = [r["metrics"]["accuracy"] for r in rounds]
    # Ten classes: chance is 0.1. It ends at about 0.55-0.6 (thread timing changes the order updates are
    # summed in, and so the run by a little); an aggregation that did nothing stays near 0.1.
    assert accuracy[-1] > 0.45 and max(accuracy[-2:]) > 0.5, accuracy
    assert rounds[-1]["metrics"]["loss"] < rounds[0]["metrics"]["loss"]
    assert rounds[-1]["metrics"]["eval_samples"] == 1000  # 5 silos x 200 test images


def test_a_folder_without_its_shard_file_is_refused_with_a_hint(tmp_path: Path) -> None:
    from fedmq_fashion_mnist.task import FashionMnist

    with pytest.raises(DataError, match="holds no fashion-mnist.json") as raised:
        FashionMnist(tmp_path)
    assert "fashion-mnist-silos" in raised.value.hint
    (tmp_path / "fashion-mnist.json").write_text('{"silos": 5, "silo": 5, "alpha": 0.5}')
    with pytest.raises(DataError, match="silo 5 is not one of the 5 silos"):
        FashionMnist(tmp_path)

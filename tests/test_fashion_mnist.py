"""The Fashion-MNIST loader (scripts/experiments/fashion_mnist.py): IDX files against NumPy arrays written
here, the real files where Debian's dataset-fashion-mnist is installed, and the missing-dataset
error of the loader and of scripts/experiments/train.py."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "experiments"))
import fashion_mnist  # noqa: E402


def write_idx(path: Path, a: np.ndarray) -> None:
    head = struct.pack(">HBB", 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(head + a.astype(np.uint8).tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_reads_what_was_written(tmp_path, gz):
    rng = np.random.default_rng(0)
    for split, n in (("train", 7), ("test", 3)):
        images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        img_stem, lab_stem = fashion_mnist.FILES[split]
        suffix = ".gz" if gz else ""
        write_idx(tmp_path / (img_stem + suffix), images)
        write_idx(tmp_path / (lab_stem + suffix), labels)
        got_images, got_labels = fashion_mnist.load(split, tmp_path)
        assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
        assert got_images.dtype == np.uint8 and got_labels.dtype == np.int64


def test_rejects_a_truncated_or_foreign_file(tmp_path):
    (tmp_path / "x.idx").write_bytes(struct.pack(">HBBI", 0, 0x08, 1, 10) + b"\0" * 4)
    with pytest.raises(ValueError, match="header says"):
        fashion_mnist.read_idx(tmp_path / "x.idx")
    (tmp_path / "y.idx").write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        fashion_mnist.read_idx(tmp_path / "y.idx")


def test_missing_dataset_names_the_package(tmp_path):
    with pytest.raises(fashion_mnist.DatasetMissing, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.load("train", tmp_path)
    proc = subprocess.run([sys.executable, "scripts/experiments/train.py", "--data", "fashion-mnist",
                           "--data-dir", str(tmp_path), "--model", "convnet", "--algo", "dense", "--epochs", "1",
                           "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: Fashion-MNIST not found in") and "dataset-fashion-mnist" in last, proc.stderr


@pytest.mark.skipif(not Path(fashion_mnist.DEFAULT_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_the_installed_dataset():
    images, labels = fashion_mnist.load("test", fashion_mnist.DEFAULT_DIR)
    assert images.shape == (10_000, 28, 28) and labels.shape == (10_000,)
    assert np.bincount(labels).tolist() == [1000] * 10
    x = fashion_mnist.normalized(images[:5])
    assert tuple(x.shape) == (5, 1, 28, 28)
    # the first test image (an ankle boot, class 9), decoded from the file's bytes directly
    raw = gzip.open(Path(fashion_mnist.DEFAULT_DIR) / "t10k-images-idx3-ubyte.gz").read()
    assert np.array_equal(images[0].reshape(-1), np.frombuffer(raw, np.uint8, 784, offset=16)) and labels[0] == 9

"""Write MNIST-format files (IDX, as torchvision.datasets.MNIST reads them) built from
scikit-learn's bundled 8x8 handwritten digits, so MNIST examples run offline.

    python scripts/experiments/make_local_mnist.py DATA_DIR      # then: --data-dir DATA_DIR

The 1,797 real digit images are upscaled to 28x28 (3x3 blocks, 2-pixel border) and
split 1,500 train / 297 test. Needs scikit-learn. This is a stand-in for MNIST, not MNIST.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    dims = array.shape
    with open(path, "wb") as f:
        f.write(struct.pack(">I", 0x0800 + len(dims)))  # unsigned byte data, len(dims) dimensions
        f.write(struct.pack(f">{len(dims)}I", *dims))
        f.write(array.astype(np.uint8).tobytes())


def main() -> int:
    from sklearn.datasets import load_digits

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "data") / "MNIST" / "raw"
    out.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    images = np.kron(digits.images, np.ones((3, 3))) * (255.0 / 16.0)       # 24 x 24
    images = np.pad(images, ((0, 0), (2, 2), (2, 2))).round().astype(np.uint8)  # 28 x 28
    labels = digits.target.astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(labels))
    train, test = order[:1500], order[1500:]
    write_idx(out / "train-images-idx3-ubyte", images[train])
    write_idx(out / "train-labels-idx1-ubyte", labels[train])
    write_idx(out / "t10k-images-idx3-ubyte", images[test])
    write_idx(out / "t10k-labels-idx1-ubyte", labels[test])
    print(f"wrote {len(train)} train / {len(test)} test images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

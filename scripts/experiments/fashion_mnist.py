"""Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017) from the IDX files on disk, never the network.

Debian's package ``dataset-fashion-mnist`` installs the four gzipped IDX files in
``DEFAULT_DIR`` (``apt-get install dataset-fashion-mnist``; scripts/setup_env.sh does it
where apt is available). 60,000 training and 10,000 test images, 1 x 28 x 28 uint8, labels
0..9 (T-shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot).

An IDX file: a big-endian magic 0x0000 08 NN (unsigned bytes, NN dimensions), one big-endian
uint32 per dimension, then the data; files may be gzipped (``.gz``) or not.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
PACKAGE = "dataset-fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
MEAN, STD = 0.2860, 0.3530  # of the training pixels scaled to [0, 1]


class DatasetMissing(FileNotFoundError):
    """The IDX files are not where they were looked for."""


def read_idx(path: str | Path) -> np.ndarray:
    """The uint8 array of one IDX file (gzipped or not), shaped by its header."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims}, file holds {body.size} bytes of data")
    return body.reshape(dims)


def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise DatasetMissing(f"Fashion-MNIST not found in {data_dir} (no {stem}[.gz]): install it with "
                         f"`apt-get install {PACKAGE}` or pass --data-dir DIR holding the four IDX files")


def load(split: str, data_dir: str | Path = DEFAULT_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 28 x 28 uint8, labels N int64) of ``split`` ("train" or "test")."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data_dir = Path(data_dir)
    images_file, labels_file = (_find(data_dir, stem) for stem in FILES[split])
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{data_dir}: images {images.shape} and labels {labels.shape} do not match")
    return images, labels.astype(np.int64)


def normalized(images: np.ndarray):
    """float32 torch tensor N x 1 x 28 x 28: pixels / 255, then (x - MEAN) / STD."""
    import torch

    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return (x - MEAN) / STD

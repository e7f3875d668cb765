"""Local sparsification: exact top-k by magnitude and the pairwise sparse merge.

Thin, validating wrappers over the native kernels in ``gtopk_mpi._C``. The ranking
is the same everywhere (CPU, CUDA, the NumPy reference in tests/): by |value|,
NaN above +inf above every finite value, equal magnitudes to the lower index;
results list indices in ascending order.
"""

from __future__ import annotations

import math
import os

import numpy as np

from . import _C

#: dtypes the sparse collectives accept
SPARSE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def default_threads() -> int:
    """OpenMP threads for selection: $GTOPK_NUM_THREADS, else 1 (ranks share cores)."""
    return max(1, int(os.environ.get("GTOPK_NUM_THREADS", "1")))


def index_dtype(m: int) -> np.dtype:
    """int32 when every index of a length-m vector fits, else int64."""
    return np.dtype(np.int32) if m <= np.iinfo(np.int32).max else np.dtype(np.int64)


def resolve_k(m: int, k: int | None, density: float | None) -> int:
    """k from exactly one of k (>= 1) or density rho in (0, 1]: max(1, ceil(rho * m))."""
    if (k is None) == (density is None):
        raise ValueError("pass exactly one of k or density")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"k must be an integer, got {k!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return int(k)
    rho = float(density)  # type: ignore[arg-type]
    if not (0.0 < rho <= 1.0):
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    return max(1, math.ceil(rho * m))


def check_vector(x: np.ndarray, name: str = "x", dtypes: tuple[np.dtype, ...] = SPARSE_DTYPES) -> None:
    """ValueError unless x is a contiguous 1-D NumPy array of one of ``dtypes``."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be contiguous")
    if x.dtype not in dtypes:
        names = ", ".join(str(d) for d in dtypes)
        raise ValueError(f"{name} has unsupported dtype {x.dtype} (supported: {names})")


def select_topk(x: np.ndarray, k: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-min(k, len(x)) of 1-D float16/32/64 ``x`` by |value|.

    Returns ``(indices, values)``: indices ascending (int32 when len(x) < 2**31,
    else int64), values ``x[indices]`` bit for bit.
    """
    check_vector(x)
    return _C.select_topk(x, int(k), default_threads() if threads is None else threads)


def select_topk_ef(
    residual: np.ndarray, x: np.ndarray, k: int, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fused error feedback: ``residual += x`` in place (one pass), then its top-k."""
    check_vector(x)
    check_vector(residual, "residual")
    return _C.select_topk_ef(residual, x, int(k), default_threads() if threads is None else threads)


def merge_topk(
    idx_a: np.ndarray, val_a: np.ndarray, idx_b: np.ndarray, val_b: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Union of two index-ascending sparse sets, summed at equal indices, then top-k.

    Symmetric: ``merge_topk(a, b)`` and ``merge_topk(b, a)`` are bit-identical.
    """
    return _C.merge_topk(idx_a, val_a, idx_b, val_b, int(k))


def survivors(mine: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Boolean mask over ``mine``: which of these (ascending) indices ``kept`` holds."""
    return _C.isin_sorted(mine, kept)

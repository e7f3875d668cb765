"""Local sparsification: exact top-k by magnitude and the pairwise sparse merge.

Thin, validating wrappers over the native kernels in ``gtopk_mpi._C``. The ranking
is the same everywhere (CPU, CUDA, the NumPy reference in tests/): by |value|,
NaN above +inf above every finite value, equal magnitudes to the lower index;
results list indices in ascending order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _C, config

#: value dtypes of the kernels
KERNEL_DTYPES = ("float16", "float32", "float64")


def default_threads() -> int:
    """OpenMP threads for selection: GTOPK_NUM_THREADS (default 1: ranks share cores)."""
    return max(1, config.NUM_THREADS.get())


_NAMES: dict[np.dtype, str] = {}


def dtype_name(a: np.ndarray) -> str:
    """a's dtype name ("float32", ...), cached per dtype (numpy builds the string on every
    ``dtype.name``, ~2 us, several times per collective call)."""
    try:
        return _NAMES[a.dtype]
    except KeyError:
        return _NAMES.setdefault(a.dtype, a.dtype.name)


def check_vector(x: np.ndarray, name: str = "x", dtypes: Sequence[str] = KERNEL_DTYPES) -> str:
    """x's dtype name; ValueError unless x is a contiguous 1-D NumPy array of one of ``dtypes``."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy.ndarray (or a CUDA tensor), got {type(x).__name__}")
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be contiguous")
    kind = dtype_name(x)
    if kind not in dtypes:
        raise ValueError(f"{name} has unsupported dtype {x.dtype} (supported: {', '.join(dtypes)})")
    return kind


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

"""What every rank must pass to the collectives, checked on each rank.

A rule broken on one rank raises ValueError there; the collectives catch it with
agreement.local_error so that every rank raises the same error (agreement.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import topology, wire
from .spaces import Space

#: dtypes dense_allreduce takes (MPI sums them; float16 in float32)
DENSE_DTYPES = ("float16", "float32", "float64", "int32", "int64")


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


def check_sparse(space: Space, x: Any, k: int | None, density: float | None, residual: Any | None,
                 values: str, wire_format: str = "fp32") -> tuple[int, str]:
    """(k, dtype name) of a sparse collective's arguments on this rank (x in ``space``)."""
    dtype = space.check(x, "x", space.sparse_dtypes)
    if values not in wire.VALUE_MODES:
        raise ValueError(f"values must be 'merged' or 'exact', got {values!r}")
    if wire_format not in wire.WIRES:
        raise ValueError(f"wire must be one of {', '.join(map(repr, wire.WIRES))}, got {wire_format!r}")
    if wire_format in ("bf16", "fp16") and dtype not in ("float32", "float16"):
        raise ValueError(f"wire={wire_format!r} sends float32 values in 16 bits; x is {dtype}")
    kk = resolve_k(len(x), k, density)
    if residual is not None:
        space.check(residual, "residual", space.sparse_dtypes)
        if tuple(residual.shape) != tuple(x.shape) or residual.dtype != x.dtype:
            raise ValueError(f"residual must match x: got {space.dtype_name(residual)}{list(residual.shape)}, "
                             f"x is {dtype}{list(x.shape)}")
        if isinstance(residual, np.ndarray) and not residual.flags.writeable:
            raise ValueError("residual must be writeable")
    return kk, dtype


def schedule(hierarchical: bool | str | None, layout: topology.Topology) -> bool:
    """Whether a gTop-k call runs the hierarchical schedule: None: the communicator's default
    (GTOPK_HIERARCHICAL); "auto": when the layout has several hosts and one holds several
    ranks; True / False."""
    if hierarchical is None:
        return layout.hierarchical
    if hierarchical == "auto":
        return topology.wants_hierarchy("auto", layout.host_of)
    if isinstance(hierarchical, (bool, np.bool_)):
        return bool(hierarchical)
    raise ValueError(f"hierarchical must be None, 'auto', True or False, got {hierarchical!r}")

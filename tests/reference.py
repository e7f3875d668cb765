"""A short, obviously correct sequential NumPy model of gtopk_mpi's algorithms.

Nothing here is fast: Python sorts and dicts, one rank after another, so that it
can be read against the paper. Tests compare the native kernels and the MPI
collectives against it, bit for bit where the arithmetic is the same.
"""

from __future__ import annotations

import math

import numpy as np


def magnitude(v) -> tuple[int, float]:
    """Sort key of a value: NaN above +inf above every finite |v|."""
    v = float(v)
    return (1, 0.0) if math.isnan(v) else (0, abs(v))


def canonical_nan(dtype) -> np.ndarray:
    return np.array(np.nan, dtype=dtype)  # positive quiet NaN: 0x7e00 / 0x7fc00000 / 0x7ff8...


def add(a, b, dtype):
    """a + b in dtype, rounded once (NumPy float16 adds in float32); NaN made canonical."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf + -inf is NaN, large halves overflow: both intended
        s = np.array(a, dtype=dtype) + np.array(b, dtype=dtype)
    return canonical_nan(dtype) if np.isnan(s) else s


def topk(indices, values, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k entries of largest magnitude, ties to the lower index; indices ascending."""
    indices = np.asarray(indices)
    values = np.asarray(values)
    order = sorted(range(len(indices)), key=lambda j: (tuple(-c for c in magnitude(values[j])), indices[j]))
    keep = sorted(order[:k], key=lambda j: indices[j])
    return indices[keep], values[keep]


def select(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return topk(np.arange(len(x)), x, k)


def merge(a, b, k: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Union of two sparse sets, values summed at equal indices, then top-k."""
    table: dict[int, np.ndarray] = {}
    for i, v in zip(*a):
        table[int(i)] = np.array(v, dtype=dtype)
    for i, v in zip(*b):
        table[int(i)] = add(table[int(i)], v, dtype) if int(i) in table else np.array(v, dtype=dtype)
    keys = sorted(table)
    return topk(np.array(keys, dtype=np.int64), np.array([table[i] for i in keys], dtype=dtype), k)


def gtopk(xs: list[np.ndarray], k: int, residuals: list[np.ndarray] | None = None,
          values: str = "merged", average: bool = False):
    """The butterfly gTop-k over P = len(xs) ranks, simulated one rank after another.

    Returns (indices, values, residuals_after). Ranks p2 + i (p2 = largest power of
    two <= P) fold into rank i first; each round r merges rank q with q XOR 2^r.
    A rank's entry counts as carried only while it survives every merge of its group.
    In ``exact`` mode values are summed in rank order (equal to MPI's sum only when
    the arithmetic is exact, e.g. integer-valued floats).
    """
    p = len(xs)
    dtype = xs[0].dtype
    accs = [x.copy() if residuals is None else r + x for x, r in zip(xs, residuals or [None] * p)]
    own = [select(acc, k) for acc in accs]
    alive = [set(int(i) for i in own[q][0]) for q in range(p)]
    p2 = 1 << (p.bit_length() - 1)
    host = [q if q < p2 else q - p2 for q in range(p)]
    state = {q: own[q] for q in range(p2)}

    def track() -> None:
        for q in range(p):
            alive[q] &= set(int(i) for i in state[host[q]][0])

    for q in range(p2, p):
        state[q - p2] = merge(state[q - p2], own[q], k, dtype)
    if p > p2:
        track()
    step = 1
    while step < p2:
        state = {q: merge(state[min(q, q ^ step)], state[max(q, q ^ step)], k, dtype) for q in range(p2)}
        track()
        step <<= 1
    g_idx, g_val = state[0]
    if values == "exact":
        g_val = np.array([sum_in_order([acc[i] for acc in accs], dtype) for i in g_idx], dtype=dtype)
    after = []
    for q in range(p):
        r = accs[q].copy()
        r[g_idx if values == "exact" else sorted(alive[q])] = 0
        after.append(r)
    if average:
        g_val = divide(g_val, p)
    return g_idx, g_val, after


def gtopk_tree(xs: list[np.ndarray], k: int):
    """The paper's tree form: rank q absorbs rank q + 2^r in round r; rank 0 holds the result."""
    dtype = xs[0].dtype
    state = {q: select(x, k) for q, x in enumerate(xs)}
    step = 1
    while step < len(xs):
        for q in range(0, len(xs), 2 * step):
            if q + step < len(xs):
                state[q] = merge(state[q], state[q + step], k, dtype)
        step <<= 1
    return state[0]


def sum_in_order(vals, dtype):
    s = np.array(vals[0], dtype=dtype)
    for v in vals[1:]:
        s = add(s, v, dtype)
    return s


def divide(vals: np.ndarray, p: int) -> np.ndarray:
    if vals.dtype == np.float16:
        return (vals.astype(np.float32) / np.float32(p)).astype(np.float16)
    return vals / vals.dtype.type(p)


def topk_allgather(xs: list[np.ndarray], k: int, average: bool = False):
    """TopKAllReduce: union of every rank's top-k, values summed (in rank order)."""
    dtype = xs[0].dtype
    table: dict[int, list] = {}
    for x in xs:
        for i, v in zip(*select(x, k)):
            table.setdefault(int(i), []).append(v)
    keys = sorted(table)
    vals = np.array([sum_in_order(table[i], dtype) for i in keys], dtype=dtype)
    if average:
        vals = divide(vals, len(xs))
    return np.array(keys, dtype=np.int64), vals


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shape, dtype and bit patterns (so -0.0 != 0.0 and NaN payloads count)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    u = np.dtype(f"u{a.dtype.itemsize}")
    return bool(np.array_equal(a.view(u), b.view(u)))

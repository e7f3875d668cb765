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


def merged_tags(ia, ta, ib, tb, kept) -> np.ndarray:
    """The tag each kept index carries through a merge: a's tag OR b's (0 where absent)."""
    tags = {int(i): int(t) for i, t in zip(ia, ta)}
    for i, t in zip(ib, tb):
        tags[int(i)] = tags.get(int(i), 0) | int(t)
    return np.array([tags[int(i)] for i in kept], np.uint32)


def settle(residual, idx, tags, own_bit: int, records) -> np.ndarray:
    """_C.settle's model, in place: the residual is 0 (+0.0) where the result carries this
    rank's own entry, then each record's errors are added, in order, at the entries holding
    its bit. Returns the carried indices."""
    mine = (tags & own_bit) != 0
    residual[idx[mine]] = 0
    for bit, rec_idx, err in records:
        for i in idx[(tags & bit) != 0]:
            at = int(np.searchsorted(rec_idx, i))
            if at == len(rec_idx) or rec_idx[at] != i:
                raise ValueError("settle: a tagged entry has no error record")
            residual[i] = residual[i] + err[at]
    return idx[mine]


# ---- wire codecs (gtopk_mpi/wire.py, csrc/codec.h) ---------------------------------------


def round_bf16(v: np.ndarray) -> np.ndarray:
    """float32 values as they arrive through bfloat16: nearest even, NaN -> quiet NaN."""
    u = np.asarray(v, np.float32).view(np.uint32).astype(np.uint64)
    kept = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32)
    kept[np.isnan(v)] = 0x7FC00000
    return kept.view(np.float32)


def fp16_scale(v: np.ndarray) -> int:
    """s with the largest finite |v| * 2^s in [2^14, 2^15), clipped to [-24, 40] (0: none)."""
    finite = np.abs(v[np.isfinite(v)])
    if finite.size == 0 or finite.max() == 0:
        return 0
    return int(np.clip(15 - math.frexp(float(finite.max()))[1], -24, 40))


def round_fp16(v: np.ndarray) -> np.ndarray:
    """float32 values as they arrive through float16 scaled by 2^s."""
    s = fp16_scale(v)
    with np.errstate(over="ignore"):
        out = (v * np.float32(2.0**s)).astype(np.float16).astype(np.float32) * np.float32(2.0**-s)
    out[np.isnan(v)] = np.float32("nan")
    return out.astype(np.float32)


def wire_round(v: np.ndarray, wire: str) -> np.ndarray:
    """What a receiver decodes of values v sent with ``wire`` (only float32 is rounded)."""
    if wire == "fp32" or v.dtype != np.float32:
        return v
    return round_bf16(v) if wire == "bf16" else round_fp16(v)


def pack_gaps(indices) -> bytes:
    """Packed gaps of ascending indices: blocks of 32, a width byte, then w-bit gaps LSB first."""
    out = bytearray()
    prev = -1
    idx = [int(i) for i in indices]
    for b in range(0, len(idx), 32):
        gaps = []
        for i in idx[b : b + 32]:
            gaps.append(i - prev - 1)
            prev = i
        w = max(gaps).bit_length()
        out.append(w)
        bits = sum(g << (w * j) for j, g in enumerate(gaps))
        out += bits.to_bytes((len(gaps) * w + 7) // 8, "little")
    return bytes(out)


def unpack_gaps(data: bytes, n: int) -> list[int]:
    out, pos, prev = [], 0, -1
    for b in range(0, n, 32):
        length = min(32, n - b)
        w = data[pos]
        nbytes = (length * w + 7) // 8
        bits = int.from_bytes(data[pos + 1 : pos + 1 + nbytes], "little")
        for j in range(length):
            prev = prev + 1 + ((bits >> (w * j)) & ((1 << w) - 1))
            out.append(prev)
        pos += 1 + nbytes
    return out


def index_bytes(indices, itemsize: int = 4) -> int:
    """Bytes the indices take on the wire: packed when that is smaller."""
    return min(len(pack_gaps(indices)), len(indices) * itemsize)


def message_bytes(kind: str, indices, tail: int, dtype, wire: str, header: int) -> int:
    """Size of a message of gtopk()'s trace: the header, the indices (int32; packed when
    smaller unless raw), the values (2 bytes for float32 through a 16-bit wire), the tail."""
    n, itemsize = len(indices), np.dtype(dtype).itemsize
    packed = kind != "raw" and wire != "raw"
    value = 2 if kind == "wire" and wire in ("bf16", "fp16") and np.dtype(dtype) == np.float32 else itemsize
    return header + (index_bytes(indices) if packed else 4 * n) + n * value + tail


# ---- the collectives ----------------------------------------------------------------------


def merge_tracked(a, b, k: int, dtype):
    """merge() of (indices, values, pending) sets, where pending[j] maps a rank to the rounding
    error it owns on entry j: the maps follow their entries (joined at equal indices) and are
    dropped with them."""
    ia, va, pa = a
    ib, vb, pb = b
    table = {int(i): (np.array(v, dtype=dtype), dict(p)) for i, v, p in zip(ia, va, pa)}
    for i, v, p in zip(ib, vb, pb):
        if int(i) in table:
            w, q = table[int(i)]
            table[int(i)] = (add(w, v, dtype), {**q, **p})
        else:
            table[int(i)] = (np.array(v, dtype=dtype), dict(p))
    keys = sorted(table)
    idx, val = topk(np.array(keys, dtype=np.int64), np.array([table[i][0] for i in keys], dtype=dtype), k)
    return idx, val, [table[int(i)][1] for i in idx]


def rounding_error(v, back):
    """v - back in float32, 0 where that is not finite (an infinity or NaN travels as itself)."""
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.float32(v) - np.float32(back)
    return e if np.isfinite(e) else np.float32(0)


def sent(state, owner: int, wire: str):
    """A set as its partner receives it; the rounding error, if any, owned by ``owner``
    (pending[j][owner]: that rank's errors on entry j, in the order they arose)."""
    idx, val, pend = state
    back = wire_round(val, wire)
    if back is val:
        return state
    pend = [{**p, owner: [*p.get(owner, []), rounding_error(v, r)]} for p, v, r in zip(pend, val, back)]
    return idx, back, pend


def butterfly(sets: list, owners: list[int], k: int, dtype, wire: str = "fp32", log: list | None = None,
              kind: str = "wire"):
    """The butterfly over len(sets) members, each set (indices, values, pending): members
    p2 + i (p2 = largest power of two <= n) fold into member i first; each round r merges
    member q with q XOR 2^r; a set sent with a 16-bit ``wire`` arrives rounded (both
    partners merge what arrives) and ``owners[j]`` of the lowest member j of the group
    whose set it is owns the rounding error. Returns (the final set, each member's alive
    indices: those of its own set that survived every merge of its group; an index that
    comes back through another group stays out). ``log[j]`` gets (kind, indices, tail) for
    each message member j sends (the fold-back last, tail: its flag bytes)."""
    n = len(sets)
    alive = [set(int(i) for i in s[0]) for s in sets]
    p2 = 1 << (n.bit_length() - 1)
    into = [q if q < p2 else q - p2 for q in range(n)]
    state = {q: sets[q] for q in range(p2)}
    log = log if log is not None else [[] for _ in range(n)]

    def track() -> None:
        for q in range(n):
            alive[q] &= set(int(i) for i in state[into[q]][0])

    for q in range(p2, n):
        log[q].append((kind, sets[q][0], 0))
        state[q - p2] = merge_tracked(state[q - p2], sent(sets[q], owners[q], wire), k, dtype)
    if n > p2:
        track()
    step = 1
    while step < p2:
        for q in range(p2):
            log[q].append((kind, state[q][0], 0))
        groups = {q: sent(state[q], owners[q], wire) for q in range(0, p2, step)}  # keyed by each group's lowest
        state = {q: merge_tracked(groups[min(q, q ^ step) & ~(step - 1)], groups[max(q, q ^ step) & ~(step - 1)],
                                  k, dtype) for q in range(p2)}
        track()
        step <<= 1
    return state[0], alive


def fold_back_log(log: list, n: int, final, kind: str) -> None:
    """The fold-back messages of a butterfly over n members (the result and its flags)."""
    p2 = 1 << (n.bit_length() - 1)
    for q in range(p2, n):
        log[q - p2].append((kind, final[0], len(final[0])))


def gtopk(xs: list[np.ndarray], k: int, residuals: list[np.ndarray] | None = None,
          values: str = "merged", average: bool = False, wire: str = "fp32", trace: dict | None = None,
          hosts: list[list[int]] | None = None):
    """gTop-k over P = len(xs) ranks, simulated one rank after another.

    Returns (indices, values, residuals_after). Flat (``hosts`` None): the butterfly over
    all ranks (see butterfly()). Hierarchical (``hosts``: the ranks of each host, in rank
    order, hosts ordered by their lowest rank): the butterfly inside each host, lossless;
    then the butterfly over the hosts' sets, owned by each host's lowest rank (its
    leader), in ``wire``; a rank's entry is carried if it survives both. In ``exact`` mode
    values are summed in rank order (equal to MPI's sum only when the arithmetic is exact,
    e.g. integer-valued floats). ``trace``, if given, receives for each rank the messages
    it sends: (kind, indices, tail bytes), kind "wire" (indices packed when smaller, values
    per ``wire``), "lossless" (packed indices, values in their dtype) or "raw" (unpacked
    pairs, inside a host); the residuals keep what is not carried and the rounding errors
    each rank owns on entries of the result.
    """
    p = len(xs)
    dtype = xs[0].dtype
    accs = [x.copy() if residuals is None else r + x for x, r in zip(xs, residuals or [None] * p)]
    own = [(*select(acc, k), [{} for _ in range(min(k, len(acc)))]) for acc in accs]
    log = [[] for _ in range(p)]
    if hosts is None:
        final, alive = butterfly(own, list(range(p)), k, dtype, wire, log)
        fold_back_log(log, p, final, "lossless")
    else:
        host_sets, host_alive = [], []
        for members in hosts:
            sub = [log[q] for q in members]
            got, kept = butterfly([own[q] for q in members], list(members), k, dtype, "fp32", sub, "raw")
            host_sets.append(got)
            host_alive.append(kept)
        leaders = [members[0] for members in hosts]
        final, across = butterfly(host_sets, leaders, k, dtype, wire, [log[q] for q in leaders])
        fold_back_log([log[q] for q in leaders], len(hosts), final, "lossless")
        alive = [set() for _ in range(p)]
        for h, members in enumerate(hosts):
            n = len(members)
            p2 = 1 << (n.bit_length() - 1)
            for j in range(p2):  # the binomial tree down the host: j forwards to j + 2^s below its lowest bit
                low = (j & -j) or p2
                log[members[j]] += [("raw", final[0], len(final[0]))] * (low.bit_length() - 1) if n > 1 else []
            fold_back_log([log[q] for q in members], n, final, "raw")
            for j, q in enumerate(members):
                alive[q] = host_alive[h][j] & across[h]
    g_idx, g_val, g_pend = final
    if trace is not None:
        trace.update(enumerate(log))
    if values == "exact":
        g_val = np.array([sum_in_order([acc[i] for acc in accs], dtype) for i in g_idx], dtype=dtype)
    after = []
    for q in range(p):
        r = accs[q].copy()
        r[g_idx if values == "exact" else sorted(alive[q])] = 0
        after.append(r)
    if values == "merged":
        for i, pend in zip(g_idx, g_pend):
            for q, errs in pend.items():
                for err in errs:
                    after[q][i] = add(after[q][i], err, dtype)
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


def topk_allgather(xs: list[np.ndarray], k: int, average: bool = False, wire: str = "fp32"):
    """TopKAllReduce: union of every rank's top-k (as it arrives through ``wire``), values
    summed in a fixed pairwise tree of unions (rank 0 with 1, 2 with 3, ..., then the
    results the same way). Returns (indices, values, each rank's rounding errors at its own
    entries: what its residual keeps there)."""
    dtype = xs[0].dtype
    parts, errors = [], []
    for x in xs:
        idx, val = select(x, k)
        back = wire_round(val, wire)
        parts.append((idx, back))
        errors.append((idx, np.array([rounding_error(v, r) for v, r in zip(val, back)], dtype=dtype)))
    while len(parts) > 1:
        nxt = [merge(parts[i], parts[i + 1], 10**12, dtype) for i in range(0, len(parts) - 1, 2)]
        parts = nxt + parts[len(nxt) * 2 :]
    keys, vals = parts[0]
    if average:
        vals = divide(vals, len(xs))
    return np.asarray(keys, dtype=np.int64), vals, errors


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shape, dtype and bit patterns (so -0.0 != 0.0 and NaN payloads count)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    u = np.dtype(f"u{a.dtype.itemsize}")
    return bool(np.array_equal(a.view(u), b.view(u)))

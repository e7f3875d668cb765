"""The collectives: dense allreduce, allgather Top-k, and the gTop-k butterfly.

gTop-k (Shi et al., ICDCS-W 2019) in butterfly form. Every rank selects its k
largest-magnitude entries (k = ceil(density * m) or given). In round r = 0, 1, ...
of log2(P) rounds each rank swaps its current k-set with rank XOR 2^r in one
message and both run the same merge: union, values summed at equal indices, keep
the k largest magnitudes (ties to the lower index). Partners hold identical sets
after every round, so after the last one every rank holds the same global k-set
with no root and no broadcast: log2(P) messages of 8k bytes (float32) per rank.
For P not a power of two, the ranks p2 + i (p2 = largest power of two <= P) first
fold their set into rank i and get the result back from it at the end.

State and error feedback. With ``residual`` (same shape and dtype as x) the
collective works on acc = residual + x (fused into the selection pass). An entry
of this rank reaches the result only if it survives every merge on the way; one
dropped in round r stays out even if its index comes back through another group.
Each rank therefore tracks a survivor mask over its own k entries (folded ranks
learn theirs from their partner), and afterwards ``residual`` holds exactly what
this rank's contribution did not carry:

    sum over ranks of (residual_after + result.to_dense()) == sum of (residual_before + x)

``values="merged"`` returns the values as merged through the rounds (partial
sums); ``values="exact"`` adds one Allreduce of acc[G] over the agreed index set G,
so the values are the exact sums over all ranks.

Errors. Each message carries a header (sequence number, dtype, length, k, average,
values mode, error flag). A rank with bad local input, or one that sees its
partner disagree, switches to an error state that travels through the remaining
rounds like data (the smaller of two errors wins), so every rank raises the same
exception in the same call and the communicator stays usable. If the call raises,
x has already been added into ``residual`` on ranks whose own input was valid:
nothing was sent, so no gradient mass is lost.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from . import runtime, wire
from .errors import MismatchError
from .selection import (
    SPARSE_DTYPES,
    check_vector,
    index_dtype,
    merge_topk,
    resolve_k,
    select_topk,
    select_topk_ef,
    survivors,
)

TAG_GTOPK = 0x6770
DENSE_DTYPES = (*SPARSE_DTYPES, np.dtype(np.int32), np.dtype(np.int64))


@dataclass
class CommStats:
    """What one call cost this rank. Times in seconds; bytes are payload handed to MPI."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    allreduce_bytes: int = 0     # vector length x itemsize handed to MPI_Allreduce
    select_s: float = 0.0        # local top-k (with the fused residual pass)
    comm_s: float = 0.0          # inside MPI calls
    merge_s: float = 0.0         # merges, survivor masks, residual update
    skew_s: float = 0.0          # align=True: waiting at the barrier for slower ranks' selection
    total_s: float = 0.0


@dataclass(frozen=True)
class SparseResult:
    """A sparse vector of dense length ``size``: ``values`` at ascending ``indices``."""

    indices: np.ndarray
    values: np.ndarray
    size: int
    stats: CommStats = field(default_factory=CommStats, compare=False)
    #: this rank's own entries whose full value the result carries (their residual is now 0)
    carried: np.ndarray | None = field(default=None, compare=False)

    @property
    def nnz(self) -> int:
        return len(self.indices)

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    def to_dense(self):
        """The dense vector (zeros outside ``indices``), on the same device as ``values``."""
        if isinstance(self.values, np.ndarray):
            out = np.zeros(self.size, self.values.dtype)
            out[self.indices] = self.values
            return out
        from . import cuda  # values on a GPU (gtopk_mpi.cuda)

        return cuda.to_dense(self.indices, self.values, self.size)


def _align(comm: MPI.Comm, align: bool, stats: CommStats) -> None:
    if align:
        t0 = time.perf_counter()
        comm.Barrier()
        stats.skew_s = time.perf_counter() - t0


def _raise(err: wire.Error) -> None:
    raise (ValueError if err.code == wire.ERROR_VALUE else MismatchError)(err.text)


def _scale_average(values: np.ndarray, p: int) -> np.ndarray:
    """values / p, rounded once to values' dtype (float16 divides in float32)."""
    if values.dtype == np.float16:
        return (values.astype(np.float32) / np.float32(p)).astype(np.float16)
    return values / values.dtype.type(p)


def allreduce_inplace(comm: MPI.Comm, buf: np.ndarray, op: MPI.Op = MPI.SUM) -> None:
    """In-place MPI_Allreduce of a 1-D array; float16 is reduced in float32 and rounded once."""
    if buf.dtype == np.float16:
        wide = buf.astype(np.float32)
        comm.Allreduce(MPI.IN_PLACE, wide, op=op)
        buf[...] = wide.astype(np.float16)
    else:
        comm.Allreduce(MPI.IN_PLACE, buf, op=op)


# --------------------------------------------------------------------------------------
# dense baseline


def dense_allreduce(x: np.ndarray, average: bool = False, comm: MPI.Comm | None = None) -> np.ndarray:
    """The paper's DenseAllReduce: MPI_Allreduce (sum) of a 1-D array, on every rank.

    x: contiguous 1-D float16/32/64 or int32/64 array, same length and dtype on every
    rank. Returns a new array; ``average`` divides by the number of ranks (integer
    dtypes: floor division). ``comm``: default the communicator given to init().
    A torch CUDA tensor (or CuPy array) takes the GPU path (gtopk_mpi.cuda).
    """
    comm = comm if comm is not None else runtime.comm()
    if on_device(x):
        from . import cuda

        return cuda.dense_allreduce(x, average=average, comm=comm)
    err = _local_error(comm, lambda: check_vector(x, dtypes=DENSE_DTYPES))
    agree_dense(comm, len(x) if err is None else -1, x.dtype if err is None else None, average, err)
    out = np.array(x, copy=True)
    allreduce_inplace(comm, out)
    return _average_dense(out, comm.Get_size()) if average else out


def on_device(x: object) -> bool:
    """True for a torch CUDA tensor or a CuPy array (the GPU path takes those)."""
    return not isinstance(x, np.ndarray) and (getattr(x, "is_cuda", False) or hasattr(x, "__cuda_array_interface__"))


def agree_dense(comm: MPI.Comm, m: int, dtype: np.dtype | None, average: bool, err: wire.Error | None) -> None:
    """The header agreement of dense_allreduce (raises the same error on every rank)."""
    header = wire.make_header(seq=runtime.next_sequence(comm), m=m, k=0, count=0, rank=comm.Get_rank(), dtype=dtype,
                              average=average, values="merged", error=err.code if err else 0)
    _agree(comm, "dense_allreduce", header, err)


def _average_dense(out: np.ndarray, p: int) -> np.ndarray:
    """A dense sum divided by p: floor division for integers, else rounded once."""
    if out.dtype.kind == "i":
        out //= p
        return out
    return _scale_average(out, p)


def _local_error(comm: MPI.Comm, check) -> wire.Error | None:
    try:
        check()
    except ValueError as e:
        return wire.Error(wire.ERROR_VALUE, f"rank {comm.Get_rank()}: {e}")
    return None


def _agree(comm: MPI.Comm, op: str, header: np.ndarray, err: wire.Error | None) -> None:
    """Allgather every rank's header and error; raise the same error on every rank."""
    gathered = comm.allgather((header.tobytes(), err))
    errors = [e for _, e in gathered if e is not None]
    if errors:
        _raise(min(errors))
    headers = np.frombuffer(b"".join(h for h, _ in gathered), wire.HEADER)
    mismatch = wire.first_mismatch(op, headers)
    if mismatch is not None:
        _raise(mismatch)


# --------------------------------------------------------------------------------------
# where a sparse collective's sets and messages live


class HostSpace:
    """Host memory: sets, messages and merges as NumPy arrays (the default).

    The sparse collectives touch their data only through these methods, so the GPU path
    (gtopk_mpi.cuda.DeviceSpace, GTOPK_MPI_CUDA_AWARE=1) can keep every set and message in
    device memory and hand device buffers to a CUDA-aware MPI.
    """

    def empty(self, nbytes: int) -> np.ndarray:
        return np.empty(nbytes, np.uint8)

    def empty_set(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)

    def numpy_dtype(self, val: np.ndarray) -> np.dtype:
        return val.dtype

    def ready(self, buf: np.ndarray) -> np.ndarray:
        """buf, safe for MPI to read now."""
        return buf

    def pack(self, header: np.ndarray, *parts) -> np.ndarray:
        return wire.pack(header, *parts)

    def header(self, buf: np.ndarray) -> np.void:
        return wire.unpack_header(buf)

    def error_text(self, buf: np.ndarray) -> str:
        return wire.error_text(buf)

    def entries(self, buf: np.ndarray, count: int, idx_dtype, val_dtype):
        return wire.unpack_entries(buf, count, idx_dtype, val_dtype)

    def pack_entries(self, idx: np.ndarray, val: np.ndarray) -> np.ndarray:
        return wire.pack_entries(idx, val)

    def split_entries(self, buf: np.ndarray, count: int, idx_dtype, val_dtype):
        return wire.split_entries(buf, count, idx_dtype, val_dtype)

    def merge(self, ia, va, ib, vb, k: int):
        return merge_topk(ia, va, ib, vb, k)

    def survivors(self, mine: np.ndarray, kept: np.ndarray) -> np.ndarray:
        return survivors(mine, kept)

    def ones_mask(self, n: int) -> np.ndarray:
        return np.ones(n, bool)

    def mask_bytes(self, mask: np.ndarray) -> np.ndarray:
        return mask.view(np.uint8)

    def bytes_mask(self, tail: np.ndarray) -> np.ndarray:
        return tail.view(bool)

    def allreduce(self, comm: MPI.Comm, vals: np.ndarray) -> np.ndarray:
        """The sum over ranks, in vals (made contiguous first) when it is contiguous."""
        vals = np.ascontiguousarray(vals)
        allreduce_inplace(comm, vals)
        return vals

    def scale_average(self, vals: np.ndarray, p: int) -> np.ndarray:
        """vals / p rounded once (integers: floor division)."""
        return _average_dense(vals, p)


HOST = HostSpace()


# --------------------------------------------------------------------------------------
# allgather Top-k baseline


def topk_allreduce(x: np.ndarray, k: int | None = None, density: float | None = None,
                   average: bool = False, residual: np.ndarray | None = None,
                   comm: MPI.Comm | None = None, align: bool = False) -> SparseResult:
    """The paper's TopKAllReduce: local top-k, Allgather of (index, value), summed.

    Returns the union of all ranks' k-sets (up to P*k entries) with values summed.
    With ``residual`` the selection runs on residual + x and residual keeps what
    was not selected (all selected entries are sent, so those become zero).
    A torch CUDA tensor (or CuPy array) takes the GPU path (gtopk_mpi.cuda).
    """
    comm = comm if comm is not None else runtime.comm()
    if on_device(x):
        from . import cuda

        return cuda.topk_allreduce(x, k=k, density=density, average=average, residual=residual, comm=comm,
                                   align=align)
    stats = CommStats()
    t_start = time.perf_counter()
    err, kk = _validate_sparse(comm, x, k, density, residual, "merged")
    idx, val = _select(x, kk, residual) if err is None else (None, None)
    stats.select_s = time.perf_counter() - t_start
    res = topk_exchange(comm, idx, val, len(x) if err is None else -1, kk, err, average, stats, align, t_start)
    if residual is not None:
        residual[idx] = 0
    return res


def topk_exchange(comm: MPI.Comm, idx: np.ndarray | None, val: np.ndarray | None, m: int, k: int,
                  err: wire.Error | None, average: bool, stats: CommStats, align: bool, t_start: float,
                  space: HostSpace = HOST) -> SparseResult:
    """The communication of topk_allreduce over an already selected k-set (in ``space``):
    header agreement, Allgather, a fixed pairwise tree of exact unions, averaging."""
    _align(comm, align, stats)
    header = wire.make_header(seq=runtime.next_sequence(comm), m=m, k=k, count=0, rank=comm.Get_rank(),
                              dtype=space.numpy_dtype(val) if err is None else None, average=average,
                              values="merged", error=err.code if err else 0)
    t0 = time.perf_counter()
    _agree(comm, "topk_allreduce", header, err)
    p = comm.Get_size()
    payload = space.ready(space.pack_entries(idx, val))
    size = int(payload.nbytes)
    gathered = space.empty(p * size)
    comm.Allgather([payload, MPI.BYTE], [gathered, MPI.BYTE])
    stats.comm_s = time.perf_counter() - t0
    stats.bytes_sent = stats.bytes_received = (p - 1) * size
    stats.messages_sent = p - 1
    t0 = time.perf_counter()
    n = len(idx)
    parts = [space.split_entries(gathered[r * size : (r + 1) * size], n, idx.dtype, val.dtype) for r in range(p)]
    # pairwise tree of exact unions (k = total): a fixed order, so identical on every rank
    while len(parts) > 1:
        nxt = [space.merge(*parts[i], *parts[i + 1], max(1, p * n)) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    g_idx, g_val = parts[0]
    if average:
        g_val = space.scale_average(g_val, p)
    stats.merge_s = time.perf_counter() - t0
    stats.total_s = time.perf_counter() - t_start
    return SparseResult(g_idx, g_val, m, stats, carried=idx)


# --------------------------------------------------------------------------------------
# gTop-k butterfly


def _validate_sparse(comm: MPI.Comm, x: np.ndarray, k: int | None, density: float | None, residual: np.ndarray | None,
                     values: str) -> tuple[wire.Error | None, int]:
    kk = 0

    def check() -> None:
        nonlocal kk
        check_vector(x)
        if values not in wire.VALUE_MODES:
            raise ValueError(f"values must be 'merged' or 'exact', got {values!r}")
        kk = resolve_k(len(x), k, density)
        if residual is not None:
            check_vector(residual, "residual")
            if residual.shape != x.shape or residual.dtype != x.dtype:
                raise ValueError(f"residual must match x: got {residual.dtype}{list(residual.shape)}, "
                                 f"x is {x.dtype}{list(x.shape)}")
            if not residual.flags.writeable:
                raise ValueError("residual must be writeable")

    return _local_error(comm, check), kk


def _select(x: np.ndarray, k: int, residual: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if residual is not None:
        return select_topk_ef(residual, x, k)
    return select_topk(x, k)


# Waiting for a partner: MPI's blocking calls busy-poll a core. With more ranks than
# cores (oversubscribed test and benchmark machines) that starves the very rank being
# waited for, so we poll and yield the core between polls (GTOPK_YIELD=0: block in MPI).
_YIELD = os.environ.get("GTOPK_YIELD", "1") != "0"


def _probe(comm: MPI.Comm, source: int, status: MPI.Status) -> MPI.Message:
    if not _YIELD:
        return comm.Mprobe(source=source, tag=TAG_GTOPK, status=status)
    while True:
        msg = comm.Improbe(source=source, tag=TAG_GTOPK, status=status)
        if msg is not None:
            return msg
        os.sched_yield()


def _complete(req: MPI.Request) -> None:
    if not _YIELD:
        req.Wait()
        return
    while not req.Test():
        os.sched_yield()


class _Butterfly:
    """One rank's side of a gTop-k call: its current set (or error) and survivor masks."""

    def __init__(self, comm: MPI.Comm, header: np.ndarray, idx: np.ndarray, val: np.ndarray,
                 err: wire.Error | None, stats: CommStats, space: HostSpace = HOST):
        self.comm = comm
        self.space = space            # where the sets and messages live
        self.header = header          # this call's parameters (count is rewritten per message)
        self.idx, self.val = idx, val  # current set
        self.err = err
        self.stats = stats
        self.k = int(header["k"][0])
        self.own_idx, self.own_val = idx, val                        # this rank's entries
        self.own_alive = space.ones_mask(len(idx))
        self.folded_idx: np.ndarray | None = None                     # entries of the rank folded into us
        self.folded_alive: np.ndarray | None = None

    # -- messages -------------------------------------------------------------------
    def message(self, tail: np.ndarray | None = None) -> np.ndarray:
        h = self.header.copy()
        if self.err is not None:
            text = self.err.text.encode("utf-8")
            h["error"] = self.err.code
            h["count"] = len(text)  # an error message's count is its text's length in bytes
            return self.space.ready(self.space.pack(h, text))
        h["count"] = len(self.idx)
        parts = [self.idx, self.val] + ([tail] if tail is not None else [])
        return self.space.ready(self.space.pack(h, *parts))

    def send(self, dest: int, buf: np.ndarray) -> None:
        t0 = time.perf_counter()
        _complete(self.comm.Isend([buf, MPI.BYTE], dest=dest, tag=TAG_GTOPK))
        self._count_sent(buf, t0)

    def recv(self, source: int) -> np.ndarray:
        t0 = time.perf_counter()
        status = MPI.Status()
        msg = _probe(self.comm, source, status)
        buf = self.space.empty(status.Get_count(MPI.BYTE))
        msg.Recv([buf, MPI.BYTE])
        self.stats.bytes_received += int(buf.nbytes)
        self.stats.comm_s += time.perf_counter() - t0
        return buf

    def exchange(self, partner: int) -> np.ndarray:
        out = self.message()
        t0 = time.perf_counter()
        req = self.comm.Isend([out, MPI.BYTE], dest=partner, tag=TAG_GTOPK)
        status = MPI.Status()
        msg = _probe(self.comm, partner, status)
        buf = self.space.empty(status.Get_count(MPI.BYTE))
        msg.Recv([buf, MPI.BYTE])
        _complete(req)
        self.stats.bytes_received += int(buf.nbytes)
        self._count_sent(out, t0)
        return buf

    def _count_sent(self, buf: np.ndarray, t0: float) -> None:
        self.stats.comm_s += time.perf_counter() - t0
        self.stats.bytes_sent += int(buf.nbytes)
        self.stats.messages_sent += 1

    # -- merging --------------------------------------------------------------------
    def absorb(self, buf: np.ndarray, op: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Merge a partner's message into the current set (both partners end equal).

        Returns the partner's (indices, values) when both sides were valid.
        """
        t0 = time.perf_counter()
        theirs = self.space.header(buf)
        mine = self.header[0]
        result = None
        if theirs["error"]:
            other = wire.Error(int(theirs["error"]), self.space.error_text(buf))
            self.err = other if self.err is None else min(self.err, other)
        elif self.err is None:
            self.err = wire.first_mismatch(op, np.array([mine, theirs], dtype=wire.HEADER))
            if self.err is None:
                t_idx, t_val, _ = self.space.entries(buf, int(theirs["count"]), self.idx.dtype, self.val.dtype)
                self.idx, self.val = self.space.merge(self.idx, self.val, t_idx, t_val, self.k)
                result = (t_idx, t_val)
        if result is not None:
            self._track_survivors()
        self.stats.merge_s += time.perf_counter() - t0
        return result

    def _track_survivors(self) -> None:
        """After a merge: an entry dropped now stays out, even if its index returns later."""
        self.own_alive &= self.space.survivors(self.own_idx, self.idx)
        if self.folded_idx is not None:
            self.folded_alive &= self.space.survivors(self.folded_idx, self.idx)

    def fold_in(self, buf: np.ndarray, op: str) -> None:
        """Absorb the set of the rank folded into this one and track its survivors too."""
        theirs = self.absorb(buf, op)
        if theirs is not None:
            self.folded_idx = theirs[0]
            self.folded_alive = self.space.survivors(theirs[0], self.idx)


def _butterfly_rounds(bf: _Butterfly) -> None:
    """Run the fold-in, the log2(p2) exchange rounds and the fold-back for one rank.

    Afterwards bf.idx/bf.val hold the global k-set (or bf.err the common error) and
    bf.own_alive marks which of this rank's entries the result carries.
    """
    me, p = bf.comm.Get_rank(), bf.comm.Get_size()
    idx, val = bf.own_idx, bf.own_val
    p2 = 1 << (p.bit_length() - 1)                 # ranks >= p2 fold into rank - p2
    if me >= p2:
        bf.send(me - p2, bf.message())
        buf = bf.recv(me - p2)
        h = bf.space.header(buf)
        if h["error"]:
            bf.err = wire.Error(int(h["error"]), bf.space.error_text(buf))
        else:
            bf.idx, bf.val, tail = bf.space.entries(buf, int(h["count"]), idx.dtype, val.dtype)
            bf.own_alive = bf.space.bytes_mask(tail)
    else:
        if me + p2 < p:
            bf.fold_in(bf.recv(me + p2), "gtopk_allreduce")
        step = 1
        while step < p2:
            bf.absorb(bf.exchange(me ^ step), "gtopk_allreduce")
            step <<= 1
        if me + p2 < p:
            tail = bf.space.mask_bytes(bf.folded_alive) if bf.folded_alive is not None else None
            bf.send(me + p2, bf.message(tail))


def _begin_sparse(comm: MPI.Comm, x: np.ndarray, k: int | None, density: float | None,
                  residual: np.ndarray | None, values: str, average: bool, align: bool) -> _Butterfly:
    """Validate, select this rank's k-set (fused with the residual if any), build the header.

    A rank with bad local input starts in the error state with an empty set, so it still
    takes part in every message and every rank raises the same error.
    """
    stats = CommStats()
    t_start = time.perf_counter()
    err, kk = _validate_sparse(comm, x, k, density, residual, values)
    idx, val = _select(x, kk, residual) if err is None else (None, None)
    stats.select_s = time.perf_counter() - t_start
    return make_butterfly(comm, idx, val, len(x) if err is None else -1, kk, err, average, values, stats, align)


def make_butterfly(comm: MPI.Comm, idx: np.ndarray | None, val: np.ndarray | None, m: int, k: int,
                   err: wire.Error | None, average: bool, values: str, stats: CommStats,
                   align: bool = False, space: HostSpace = HOST) -> _Butterfly:
    """One rank's side of a sparse collective over an already selected k-set (in ``space``).

    Used by the NumPy collectives and by the CUDA path (which selects on the device and
    hands over the k pairs, in host or device memory). With ``err`` the rank takes part
    with an empty set.
    """
    seq = runtime.next_sequence(comm)
    if err is not None:
        (idx, val), dtype = space.empty_set(), None
    else:
        dtype = space.numpy_dtype(val)
    _align(comm, align, stats)
    header = wire.make_header(seq=seq, m=m, k=k, count=len(idx), rank=comm.Get_rank(), dtype=dtype,
                              average=average, values=values, error=0)
    return _Butterfly(comm, header, idx, val, err, stats, space)


def finish_gtopk(bf: _Butterfly, values: str, average: bool, t_start: float, acc_at, zero_at) -> SparseResult:
    """Run the butterfly, then exact values, the residual update and averaging.

    acc_at(indices) -> array (in bf.space): this rank's accumulated gradient at those indices
    (for values="exact"); zero_at(indices): clear the residual there (None: no residual).
    """
    _butterfly_rounds(bf)
    stats, m = bf.stats, int(bf.header["m"][0])
    if bf.err is not None:
        stats.total_s = time.perf_counter() - t_start
        _raise(bf.err)
    g_idx, g_val = bf.idx, bf.val
    if values == "exact":
        g_val = acc_at(g_idx)
        t0 = time.perf_counter()
        g_val = bf.space.allreduce(bf.comm, g_val)
        stats.comm_s += time.perf_counter() - t0
        stats.allreduce_bytes = int(g_val.nbytes)
    t0 = time.perf_counter()
    carried = g_idx if values == "exact" else bf.own_idx[bf.own_alive]
    if zero_at is not None:
        zero_at(carried)
    if average:
        g_val = bf.space.scale_average(g_val, bf.comm.Get_size())
    stats.merge_s += time.perf_counter() - t0
    stats.total_s = time.perf_counter() - t_start
    return SparseResult(g_idx, g_val, m, stats, carried=carried)


def gtopk_allreduce(x: np.ndarray, k: int | None = None, density: float | None = None,
                    average: bool = False, residual: np.ndarray | None = None,
                    values: str = "merged", comm: MPI.Comm | None = None, align: bool = False) -> SparseResult:
    """Global top-k sparse allreduce (butterfly gTopKAllReduce); see the module docstring.

    Every rank passes a contiguous 1-D float16/32/64 ``x`` of the same length and
    dtype, and the same ``k`` (entries, >= 1) or ``density`` (rho in (0, 1], k =
    max(1, ceil(rho * m))), ``average``, ``values`` ("merged" or "exact") and, if
    any, a ``residual`` like x (updated in place). Returns a SparseResult with at
    most k entries, bit-identical on every rank. k >= m gives the dense sum.
    A torch CUDA tensor (or CuPy array) takes the GPU path (gtopk_mpi.cuda), with a
    residual on the same device. ``comm``: default the communicator given to init(). ``align`` (benchmarks): a
    barrier between selection and the first message, so ``stats.comm_s`` measures the
    network, not slower ranks' selection (that wait goes to ``stats.skew_s``).
    """
    comm = comm if comm is not None else runtime.comm()
    if on_device(x):
        from . import cuda  # device arrays: selection on the GPU, only k pairs cross PCIe

        return cuda.gtopk_allreduce(x, k=k, density=density, average=average, residual=residual, values=values,
                                    comm=comm)
    t_start = time.perf_counter()
    bf = _begin_sparse(comm, x, k, density, residual, values, average, align)
    acc = residual if residual is not None else x

    def zero_at(ids: np.ndarray) -> None:
        residual[ids] = 0

    return finish_gtopk(bf, values, average, t_start, lambda ids: acc[ids], zero_at if residual is not None else None)


# --------------------------------------------------------------------------------------
# the paper's tree form, as a reference point for benchmarks


def gtopk_tree_allreduce(x: np.ndarray, k: int | None = None, density: float | None = None,
                         average: bool = False, comm: MPI.Comm | None = None, align: bool = False) -> SparseResult:
    """gTopKAllReduce as drawn in the paper: a binary reduction tree to rank 0 (same merge,
    same headers), then a broadcast of the final k-set. Half the ranks idle each round and
    the broadcast doubles the rounds; no residual tracking. For comparison only.
    """
    comm = comm if comm is not None else runtime.comm()
    me, p = comm.Get_rank(), comm.Get_size()
    t_start = time.perf_counter()
    bf = _begin_sparse(comm, x, k, density, None, "merged", average, align)
    stats, idx, val, m = bf.stats, bf.own_idx, bf.val, int(bf.header["m"][0])
    step = 1
    while step < p:
        if me % (2 * step) == step:
            bf.send(me - step, bf.message())
            break
        if me + step < p:
            bf.absorb(bf.recv(me + step), "gtopk_tree_allreduce")
        step <<= 1
    # broadcast: the root's header first (its count or error sizes the payload), then the payload
    msg = bf.message() if me == 0 else np.zeros(0, np.uint8)
    head = msg[: wire.HEADER.itemsize].copy() if me == 0 else np.zeros(wire.HEADER.itemsize, np.uint8)
    t0 = time.perf_counter()
    comm.Bcast([head, MPI.BYTE], root=0)
    h = wire.unpack_header(head)
    if h["error"]:
        nbytes = int(h["count"])
    else:
        entry = index_dtype(int(h["m"])).itemsize + wire.DTYPE_OF_CODE[int(h["dtype"])].itemsize
        nbytes = int(h["count"]) * entry
    body = msg[wire.HEADER.itemsize :].copy() if me == 0 else np.empty(nbytes, np.uint8)
    comm.Bcast([body, MPI.BYTE], root=0)
    stats.comm_s += time.perf_counter() - t0
    full = np.concatenate([head, body])
    if me == 0:
        stats.bytes_sent += full.size * (p - 1).bit_length()  # binomial tree: the root sends ceil(log2 P) copies
    else:
        stats.bytes_received += full.size
    h = wire.unpack_header(full)
    if h["error"]:
        _raise(wire.Error(int(h["error"]), wire.error_text(full)))
    g_idx, g_val, _ = wire.unpack_entries(full, int(h["count"]), idx.dtype, val.dtype)
    g_idx, g_val = g_idx.copy(), g_val.copy()
    if average:
        g_val = _scale_average(g_val, p)
    stats.total_s = time.perf_counter() - t_start
    return SparseResult(g_idx, g_val, m, stats)

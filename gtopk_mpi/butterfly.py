"""gTop-k: the global top-k sparse allreduce in butterfly form (Shi et al., ICDCS-W 2019).

Algorithm. Every rank selects its k largest-magnitude entries (k = ceil(density * m)
or given). In round r = 0, 1, ... of log2(P) rounds each rank swaps its current k-set
with rank XOR 2^r in one message and both run the same merge: union, values summed at
equal indices, keep the k largest magnitudes (ties to the lower index). Partners hold
identical sets after every round, so after the last one every rank holds the same
global k-set with no root and no broadcast: log2(P) messages of 8k bytes (float32) per
rank. For P not a power of two, the ranks p2 + i (p2 = largest power of two <= P) first
fold their set into rank i and get the result back from it at the end.

State and error feedback. With ``residual`` (same shape and dtype as x) the collective
works on acc = residual + x (fused into the selection pass). An entry of this rank
reaches the result only if it survives every merge on the way; one dropped in round r
stays out even if its index comes back through another group. Each rank therefore
tracks a survivor mask over its own k entries (folded ranks learn theirs from their
partner), and afterwards ``residual`` holds exactly what this rank's contribution did
not carry::

    sum over ranks of (residual_after + result.to_dense()) == sum of (residual_before + x)

``values="merged"`` returns the values as merged through the rounds (partial sums);
``values="exact"`` adds one allreduce of acc[G] over the agreed index set G, so the
values are the exact sums over all ranks (and every rank's residual is 0 on G).

Errors: see agreement.py; every collective begins with this module's schedule, the
others with headers alone (:meth:`Butterfly.agree`). If the call raises, x has already
been added into ``residual`` on ranks whose own input was valid: nothing was sent, so no
gradient mass is lost. Memory: see spaces.py (the same body runs on NumPy arrays and on
GPU tensors).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from . import arguments, runtime, spaces, wire
from .agreement import Error, first_mismatch, local_error
from .results import CommStats, SparseResult


class Butterfly:
    """One rank's side of a collective call: its current set (or error) and the survivor
    masks of its own entries and of a folded rank's. Sets and messages live in ``space``."""

    def __init__(self, link: Any, space: Any, header: np.ndarray, idx: Any, val: Any, err: Error | None,
                 stats: CommStats):
        self.link, self.space, self.stats = link, space, stats
        self.headers_only = False      # an agreement pass: headers (or errors) alone
        self.header = header           # this call's parameters (count is rewritten per message)
        self.k = int(header["k"][0])
        self.idx, self.val = idx, val  # current set
        self.err = err
        self.types = space.dtype_name(idx), space.dtype_name(val)
        self.own_idx = idx             # this rank's entries
        self.own_alive = space.ones(len(idx))
        self.folded_idx: Any = None    # entries of the rank folded into this one
        self.folded_alive: Any = None

    # -- messages -------------------------------------------------------------------
    def message(self, tail: Any = None) -> Any:
        h = self.header.copy()
        if self.err is not None:
            text = self.err.text.encode("utf-8")
            h["error"], h["count"] = self.err.code, len(text)
            return self.space.ready(wire.pack(self.space, h, text))
        if self.headers_only:
            h["count"] = 0
            return self.space.ready(wire.pack(self.space, h))
        h["count"] = len(self.idx)
        parts = (h, self.idx, self.val) + ((tail,) if tail is not None else ())
        return self.space.ready(wire.pack(self.space, *parts))

    def _count(self, sent: Any, received: Any) -> None:
        if sent is not None:
            self.stats.bytes_sent += int(sent.nbytes)
            self.stats.messages_sent += 1
        if received is not None:
            self.stats.bytes_received += int(received.nbytes)

    def send(self, dest: int, buf: Any) -> None:
        with self.stats.phase("comm"):
            self.link.send(buf, dest)
        self._count(buf, None)

    def recv(self, source: int) -> Any:
        with self.stats.phase("comm"):
            buf = self.link.recv(source, self.space.empty)
        self._count(None, buf)
        return buf

    def exchange(self, partner: int) -> Any:
        out = self.message()
        with self.stats.phase("comm"):
            buf = self.link.sendrecv(out, partner, self.space.empty)
        self._count(out, buf)
        return buf

    # -- merging --------------------------------------------------------------------
    def absorb(self, buf: Any) -> tuple[Any, Any] | None:
        """Merge a partner's message into the current set (both partners end equal).

        Returns the partner's (indices, values) when both sides were valid.
        """
        with self.stats.phase("merge"):
            theirs = wire.header_of(self.space, buf)
            if theirs["error"]:
                other = Error(int(theirs["error"]), wire.error_text(self.space, buf))
                self.err = other if self.err is None else min(self.err, other)
                return None
            if self.err is not None:
                return None
            self.err = first_mismatch(np.array([self.header[0], theirs], dtype=wire.HEADER))
            if self.err is not None or self.headers_only:
                return None
            t_idx, t_val, _ = wire.entries(self.space, buf, int(theirs["count"]), *self.types)
            self.idx, self.val = self.space.merge(self.idx, self.val, t_idx, t_val, self.k)
            # an entry dropped now stays out, even if its index returns later
            self.own_alive &= self.space.survivors(self.own_idx, self.idx)
            if self.folded_idx is not None:
                self.folded_alive &= self.space.survivors(self.folded_idx, self.idx)
            return t_idx, t_val

    def run(self) -> None:
        """The fold-in, the log2(p2) exchange rounds and the fold-back, for this rank.

        Afterwards idx/val hold the global k-set (or err the common error) and own_alive
        marks which of this rank's entries the result carries.
        """
        me, p = self.link.rank, self.link.size
        p2 = 1 << (p.bit_length() - 1)  # ranks >= p2 fold into rank - p2
        if me >= p2:
            self.send(me - p2, self.message())
            buf = self.recv(me - p2)
            h = wire.header_of(self.space, buf)
            if h["error"]:
                self.err = Error(int(h["error"]), wire.error_text(self.space, buf))
            elif not self.headers_only:
                self.idx, self.val, tail = wire.entries(self.space, buf, int(h["count"]), *self.types)
                self.own_alive = self.space.view(tail, "bool")
            return
        if me + p2 < p:
            theirs = self.absorb(self.recv(me + p2))
            if theirs is not None:
                self.folded_idx = theirs[0]
                self.folded_alive = self.space.survivors(theirs[0], self.idx)
        step = 1
        while step < p2:
            self.absorb(self.exchange(me ^ step))
            step <<= 1
        if me + p2 < p:
            self.send(me + p2, self.message(None if self.headers_only else self.folded_alive))

    def agree(self) -> None:
        """The same schedule with headers alone: afterwards every rank holds the same error
        (err), or none when all ranks called the same collective with agreeing arguments."""
        self.headers_only = True
        try:
            self.run()
        finally:
            self.headers_only = False


def begin(link: Any, op: str) -> int:
    """Number this call of ``op`` on ``link`` and name it for the transport's messages."""
    seq = link.next_sequence()
    link.activity = f"{op} call #{seq}"
    return seq


def agree(link: Any, header: np.ndarray, err: Error | None, stats: CommStats | None = None) -> None:
    """The agreement pass of a collective without pairwise data (dense): raises the same
    error on every rank, or returns when all ranks agree."""
    side = Butterfly(link, spaces.HOST, header, *spaces.HOST.empty_set(), err, stats or CommStats())
    side.agree()
    if side.err is not None:
        side.err.raise_()


def start(op: str, link: Any, space: Any, x: Any, k: int | None, density: float | None, residual: Any,
          values: str, average: bool, align: bool, stats: CommStats) -> tuple[Butterfly, Any, Any]:
    """Validate this rank's arguments, select its k-set (fused with the residual), and set
    up its side of the call in the message space. A rank with bad input starts in the
    error state with an empty set, so it still takes part in every message. With
    ``align`` (benchmarks) an agreement pass runs here, after selection, so that "comm"
    measures the network and the wait for slower ranks goes to "skew".

    Returns (this rank's side, x and residual as arrays of ``space``).
    """
    sets = spaces.message_space(space)
    seq = begin(link, op)
    with stats.phase("select"):

        def check():
            xs, rs = space.adopt(x), None if residual is None else space.adopt(residual)
            return (xs, rs, *arguments.check_sparse(space, xs, k, density, rs, values))

        err, checked = local_error(link, check)
        if err is None:
            xs, rs, kk, dtype = checked
            idx, val = (spaces.move(a, space, sets) for a in space.select(xs, kk, rs))
        else:
            xs = rs = dtype = None
            kk = 0
            idx, val = sets.empty_set()
    header = wire.make_header(op=op, seq=seq, m=-1 if err else len(xs), k=kk, count=len(idx), rank=link.rank,
                              dtype=dtype, average=average, values=values, align=align)
    side = Butterfly(link, sets, header, idx, val, err, stats)
    if align:
        with stats.phase("skew"):
            side.agree()
    return side, xs, rs


def gtopk_allreduce(x: Any, k: int | None = None, density: float | None = None, average: bool = False,
                    residual: Any = None, values: str = "merged", comm: Any = None, align: bool = False
                    ) -> SparseResult:
    """Global top-k sparse allreduce (butterfly gTopKAllReduce); see the module docstring.

    Every rank passes a contiguous 1-D ``x`` of the same length and dtype (NumPy
    float16/32/64, or a torch CUDA tensor / CuPy array of float16/32), and the same ``k``
    (entries, >= 1) or ``density`` (rho in (0, 1], k = max(1, ceil(rho * m))), ``average``,
    ``values`` ("merged" or "exact") and, if any, a ``residual`` like x (same memory;
    updated in place). Returns a SparseResult with at most k entries, bit-identical on
    every rank, in x's memory. k >= m gives the dense sum. ``comm``: an mpi4py
    communicator or a Transport (default: init()'s). ``align`` (benchmarks): a barrier
    between selection and the first message, so ``stats.comm_s`` measures the network,
    not slower ranks' selection (that wait goes to ``stats.skew_s``).
    """
    t0 = time.perf_counter()
    link, space, stats = runtime.transport(comm), spaces.space_for(x), CommStats()
    with space.activate():
        bf, xs, rs = start("gtopk_allreduce", link, space, x, k, density, residual, values, average, align, stats)
        if not (align and bf.err is not None):  # (after align's agreement pass an error is everyone's)
            bf.run()
        if bf.err is not None:
            bf.err.raise_()
        sets, m = bf.space, int(bf.header["m"][0])
        g_idx = spaces.move(bf.idx, sets, space)
        g_val = bf.val
        if values == "exact":
            g_val = spaces.move(space.gather(rs if rs is not None else xs, g_idx), space, sets)
            with stats.phase("comm"):
                g_val = sets.allreduce(link, g_val)
        with stats.phase("merge"):
            carried = g_idx if values == "exact" else spaces.move(bf.own_idx[bf.own_alive], sets, space)
            if rs is not None:
                space.zero_at(rs, carried)
            if average:
                g_val = sets.scale_average(g_val, link.size)
        g_val = spaces.move(g_val, sets, space)
    stats.total_s = time.perf_counter() - t0
    return SparseResult(space.wrap(g_idx), space.wrap(g_val), m, stats, carried=space.wrap(carried), space=space)

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

Compact wire (``wire="bf16"`` / ``"fp16"``, float32 vectors). A set travels with 16-bit
values; both partners then merge the values as they arrive (a rank merges its own set
rounded too), so results stay bit-identical on every rank. Sums are formed in float32;
only the wire is 16-bit. The rounding error of a set is owned by the lowest rank of the
group whose set it is (a rank alone in round 0: its own entries; the group of 2^r ranks
in round r: its lowest rank), which keeps it in its residual if that entry reaches the
result; if the entry is dropped later, every contribution to it returns whole to its
owner's residual and the rounding error with it. Tags carried through the merges track
both. The conservation law above holds exactly. The last message to a folded rank
carries the result losslessly.

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

OWN, FOLDED = 1, 2  # tag bits: this rank's own entries, the folded rank's; bit 2 + r: round r's rounding error


class Butterfly:
    """One rank's side of a collective call: its current set (or error), tags that follow
    every entry through the merges (which hold this rank's own contribution, a folded
    rank's, or a rounding error this rank owns) and those rounding errors. Sets and
    messages live in ``space``."""

    def __init__(self, link: Any, space: Any, header: np.ndarray, idx: Any, val: Any, err: Error | None,
                 stats: CommStats):
        self.link, self.space, self.stats = link, space, stats
        self.headers_only = False      # an agreement pass: headers (or errors) alone
        self.header = header           # this call's parameters
        self.k = int(header["k"][0])
        self.idx, self.val = idx, val  # current set
        self.err = err
        self.types = space.dtype_name(idx), space.dtype_name(val)
        self.code, self.pack = wire.codes(int(header["wire"][0]), self.types[1])
        self.tags = space.tags(len(idx), OWN)
        self.own_idx = idx             # this rank's entries
        self.own_alive: Any = None     # a folded rank: which of its entries the result carries
        self.folded_idx: Any = None    # entries of the rank folded into this one
        self.errors: list[tuple[int, Any, Any]] = []  # (tag bit, indices, rounding errors) this rank owns

    # -- messages -------------------------------------------------------------------
    def message(self, owner_bit: int = 0, tail: Any = None, code: int | None = None) -> Any:
        """This rank's next message. A lossy value code rounds the set: the rank then holds
        (and merges) the values its partner decodes; with ``owner_bit`` it owns the
        rounding error, kept with that tag bit on the entries that carry it."""
        if self.err is not None:
            text = self.err.text.encode("utf-8")
            h = self.header.copy()
            h["error"], h["count"] = self.err.code, len(text)
            return self.space.ready(wire.pack(self.space, h, text))
        if self.headers_only:
            return self.space.ready(wire.pack(self.space, self.header))
        code = self.code if code is None else code
        self.stats.entries_sent += len(self.idx)
        buf, rounded, errors = wire.encode(self.space, self.header, self.idx, self.val, code, tail, code != 0,
                                           self.pack)
        if rounded is not None:
            if owner_bit:
                self.errors.append((owner_bit, self.idx, errors))
                self.tags = self.tags | owner_bit
            self.val = rounded
        return buf

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

    def exchange(self, partner: int, owner_bit: int = 0) -> Any:
        with self.stats.phase("merge"):
            out = self.message(owner_bit)
        with self.stats.phase("comm"):
            buf = self.link.sendrecv(out, partner, self.space.empty)
        self._count(out, buf)
        return buf

    # -- merging --------------------------------------------------------------------
    def _check(self, buf: Any) -> np.void | None:
        """The partner's header when both sides are valid and agree; else None (err set)."""
        theirs = wire.header_of(self.space, buf)
        if theirs["error"]:
            other = Error(int(theirs["error"]), wire.error_text(self.space, buf))
            self.err = other if self.err is None else min(self.err, other)
            return None
        if self.err is None:
            self.err = first_mismatch(np.array([self.header[0], theirs], dtype=wire.HEADER))
        return theirs if self.err is None else None

    def absorb(self, buf: Any, their_tags: int = 0) -> Any:
        """Merge a partner's message into the current set (both partners end equal). Their
        entries get ``their_tags``. Returns the partner's indices when both sides were valid."""
        with self.stats.phase("merge"):
            theirs = self._check(buf)
            if theirs is None or self.headers_only:
                return None
            try:
                t_idx, t_val, _ = wire.decode(self.space, buf, theirs, *self.types)
            except ValueError as e:
                self.err = Error(1, f"rank {self.link.rank}: malformed message: {e}")
                return None
            tb = self.space.tags(len(t_idx), their_tags) if their_tags else None
            self.idx, self.val, self.tags = self.space.merge(self.idx, self.val, t_idx, t_val, self.k, self.tags, tb)
            return t_idx

    def run(self) -> None:
        """The fold-in, the log2(p2) exchange rounds and the fold-back, for this rank.

        Afterwards idx/val hold the global k-set (or err the common error); the entries
        with the OWN tag carry this rank's contribution (a folded rank: own_alive).
        """
        me, p = self.link.rank, self.link.size
        p2 = 1 << (p.bit_length() - 1)  # ranks >= p2 fold into rank - p2
        if me >= p2:
            self.send(me - p2, self.message(owner_bit=1 << 2))
            theirs = self._check(buf := self.recv(me - p2))
            if theirs is not None and not self.headers_only:
                self.idx, self.val, tail = wire.decode(self.space, buf, theirs, *self.types, tail=len(self.own_idx))
                self.own_alive = self.space.view(tail, "bool")
            return
        if me + p2 < p:
            self.folded_idx = self.absorb(self.recv(me + p2), FOLDED)
        step, rnd = 1, 0
        while step < p2:
            # the partial sum of this rank's group (ranks me - me % step ...) is rounded by
            # its lowest rank, which owns the rounding error
            self.absorb(self.exchange(me ^ step, owner_bit=(1 << (2 + rnd)) if me % step == 0 else 0))
            step, rnd = step << 1, rnd + 1
        if me + p2 < p:
            tail = None
            if self.folded_idx is not None and self.err is None and not self.headers_only:
                tail = self.space.bytes_of(self.space.survivors(self.folded_idx, self.idx[(self.tags & FOLDED) != 0]))
            self.send(me + p2, self.message(tail=tail, code=0))  # the result itself: lossless

    def feedback(self) -> tuple[Any, Any, list[tuple[int, Any, Any]]]:
        """(indices, tags, rounding-error records) for Space.settle after a successful run: the
        final set with its tags (a folded rank: its own entries, tagged where the result
        carries them), and the (tag bit, indices, errors) of each rounding this rank owns."""
        if self.own_alive is None:
            return self.idx, self.tags, self.errors
        bits = OWN | (self.errors[0][0] if self.errors else 0)
        return self.own_idx, self.space.tags(len(self.own_idx), bits) * self.own_alive, self.errors

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
          values: str, average: bool, align: bool, stats: CommStats, wire_format: str = "fp32"
          ) -> tuple[Butterfly, Any, Any]:
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
            return (xs, rs, *arguments.check_sparse(space, xs, k, density, rs, values, wire_format))

        err, checked = local_error(link, check)
        if err is None:
            xs, rs, kk, dtype = checked
            idx, val = (spaces.move(a, space, sets) for a in space.select(xs, kk, rs))
        else:
            xs = rs = dtype = None
            kk = 0
            idx, val = sets.empty_set()
    header = wire.make_header(op=op, seq=seq, m=-1 if err else len(xs), k=kk, count=len(idx), rank=link.rank,
                              dtype=dtype, average=average, values=values, align=align, wire=wire_format)
    side = Butterfly(link, sets, header, idx, val, err, stats)
    if align:
        with stats.phase("skew"):
            side.agree()
    return side, xs, rs


def gtopk_allreduce(x: Any, k: int | None = None, density: float | None = None, average: bool = False,
                    residual: Any = None, values: str = "merged", comm: Any = None, align: bool = False,
                    wire: str = "fp32") -> SparseResult:
    """Global top-k sparse allreduce (butterfly gTopKAllReduce); see the module docstring.

    Every rank passes a contiguous 1-D ``x`` of the same length and dtype (NumPy
    float16/32/64, or a torch CUDA tensor / CuPy array of float16/32), and the same ``k``
    (entries, >= 1) or ``density`` (rho in (0, 1], k = max(1, ceil(rho * m))), ``average``,
    ``values`` ("merged" or "exact") and, if any, a ``residual`` like x (same memory;
    updated in place). Returns a SparseResult with at most k entries, bit-identical on
    every rank, in x's memory. k >= m gives the dense sum. ``wire`` (wire.py): "fp32" sends
    values in x's dtype and indices packed when that is smaller (lossless); "bf16" / "fp16"
    send float32 values in 16 bits (see the module docstring); "raw" the unpacked pairs
    (int32 + x's dtype: 8 bytes for float32). ``comm``: an mpi4py
    communicator or a Transport (default: init()'s). ``align`` (benchmarks): a barrier
    between selection and the first message, so ``stats.comm_s`` measures the network,
    not slower ranks' selection (that wait goes to ``stats.skew_s``).
    """
    t0 = time.perf_counter()
    link, space, stats = runtime.transport(comm), spaces.space_for(x), CommStats()
    with space.activate():
        bf, xs, rs = start("gtopk_allreduce", link, space, x, k, density, residual, values, average, align, stats,
                           wire)
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
            if values == "exact":  # every rank's residual is 0 on the result
                carried = g_idx
                if rs is not None:
                    space.zero_at(rs, carried)
            else:
                f_idx, f_tags, records = bf.feedback()
                f_idx, f_tags = spaces.move(f_idx, sets, space), spaces.move(f_tags, sets, space)
                if rs is not None:
                    records = [(bit, spaces.move(i, sets, space), spaces.move(e, sets, space)) for bit, i, e in records]
                    carried = space.settle(rs, f_idx, f_tags, OWN, records)
                else:
                    carried = f_idx[(f_tags & OWN) != 0]
            if average:
                g_val = sets.scale_average(g_val, link.size)
        g_val = spaces.move(g_val, sets, space)
    stats.total_s = time.perf_counter() - t0
    return SparseResult(space.wrap(g_idx), space.wrap(g_val), m, stats, carried=space.wrap(carried), space=space)

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
tags its own k entries and the tags follow them through the merges (a folded rank gets
the result with one flag per entry marking what came from its set, and takes its tags
from there), and afterwards ``residual`` holds exactly what this rank's contribution did
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

Hierarchical schedule (``hierarchical``, default when ranks share hosts: topology.py).
With G ranks on each of H hosts behind one port, the flat butterfly's last log2(H) rounds
send the same k-set through a host's port G times, once per local rank. Instead: (1)
inside each host the butterfly over its ranks, with raw lossless messages (shared
memory: no packing, no rounding), leaves the host's set S_h on its ranks; (2) the hosts'
leaders (lowest rank of each) run the butterfly over the S_h across hosts in the call's
wire format: one k-set per round through each port, what a cluster of one rank per host
sends; (3) each leader passes the result down a binomial tree inside its host, lossless,
with one flag byte per entry marking what came from S_h. Residuals: a rank's entry is
carried when it survives its host's merges and then, as an entry of S_h, the leaders'
merges; the rounding errors of the cross-host messages are owned as above among the
leaders (the lowest leader of the group) and kept in that leader's residual. Results are
the same on every rank; on hosts of 2^a ranks and 2^b hosts with a lossless wire they
equal the flat schedule's bit for bit (its first a rounds stay inside hosts and its later
groups' lowest ranks are leaders).

Errors: see agreement.py; every collective begins with the communicator's default
schedule, the others with headers alone (:meth:`Butterfly.agree`), and so does a gTop-k
call on the other schedule. If the call raises, x has already
been added into ``residual`` on ranks whose own input was valid: nothing was sent, so no
gradient mass is lost. Memory: see spaces.py (the same body runs on NumPy arrays and on
GPU tensors).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from mpi4py import MPI

from . import arguments, runtime, spaces, wire
from .agreement import Error, first_mismatch, local_error
from .results import CommStats, SparseResult
from .spaces import Space
from .transport import Transport

# Tag bits carried by every entry through the merges: this rank's own contribution, the rank
# folded into this one (inside a host, or on the flat schedule), the leader folded into this
# one, this host's set (leaders), and ROUNDED << r: a rounding error of round r this rank owns.
OWN, FOLDED, FOLDED_HOST, HOST, ROUNDED = 1, 2, 4, 8, 16


class Butterfly:
    """One rank's side of a collective call: its current set (or error), tags that follow
    every entry through the merges (which hold this rank's own contribution, a folded
    rank's, or a rounding error this rank owns) and those rounding errors. Sets and
    messages live in ``space``; ``hierarchical`` picks the data schedule, the topology's
    default is the schedule of agreement passes."""

    def __init__(self, link: Transport, space: Space, header: np.ndarray, idx: Any, val: Any, err: Error | None,
                 stats: CommStats, hierarchical: bool | None = None):
        self.link, self.space, self.stats = link, space, stats
        self.layout = link.topology()
        self.hierarchical = self.layout.hierarchical if hierarchical is None else hierarchical
        self.headers_only = False      # an agreement pass: headers (or errors) alone
        self.header = header           # this call's parameters
        self.k = int(header["k"][0])
        self.idx, self.val = idx, val  # current set
        self.err = err
        self.types = space.dtype_name(idx), space.dtype_name(val)
        self.code, self.pack = wire.codes(int(header["wire"][0]), self.types[1])
        self.tags = space.tags(len(idx), OWN)
        self.own_idx = idx             # this rank's entries
        self.errors: list[tuple[int, Any, Any]] = []  # (tag bit, indices, rounding errors) this rank owns

    def live(self) -> bool:
        """Whether this pass carries data (no error, not an agreement pass)."""
        return self.err is None and not self.headers_only

    # -- messages -------------------------------------------------------------------
    def message(self, owner_bit: int = 0, tail: Any = None, code: int | None = None, pack: int | None = None
                ) -> Any:
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
        buf, rounded, errors = wire.encode(self.space, self.header, self.idx, self.val, code, tail,
                                           code != wire.RAW_VALUES, self.pack if pack is None else pack)
        if rounded is not None:
            if owner_bit:
                self.errors.append((owner_bit, self.idx, errors))
                self.tags = self.tags | owner_bit
            self.val = rounded
        return buf

    def _remote(self, link: Transport, peer: int) -> bool:
        """Whether a message to ``peer`` of ``link`` leaves this host."""
        if link is self.layout.local or link is self.layout.leaders:
            return link is self.layout.leaders
        return self.layout.host_of[peer] != self.layout.host_of[link.rank]

    def _count(self, sent: Any, received: Any, remote: bool) -> None:
        if sent is not None:
            self.stats.bytes_sent += int(sent.nbytes)
            self.stats.messages_sent += 1
            if remote:
                self.stats.port_bytes += int(sent.nbytes)
        if received is not None:
            self.stats.bytes_received += int(received.nbytes)

    def send(self, dest: int, buf: Any, link: Transport | None = None) -> None:
        link = link or self.link
        with self.stats.phase("comm"):
            link.send(buf, dest)
        self._count(buf, None, self._remote(link, dest))

    def recv(self, source: int, link: Transport | None = None, idle: bool = False) -> Any:
        link = link or self.link
        with self.stats.phase("comm"):
            buf = link.recv(source, self.space.empty, idle)
        self._count(None, buf, False)
        return buf

    def exchange(self, link: Transport, partner: int, owner_bit: int, code: int, pack: int) -> Any:
        with self.stats.phase("merge"):
            out = self.message(owner_bit, code=code, pack=pack)
        with self.stats.phase("comm"):
            buf = link.sendrecv(out, partner, self.space.empty)
        self._count(out, buf, self._remote(link, partner))
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

    def _decode(self, buf: Any, tail: bool = False) -> tuple[Any, Any, Any] | None:
        """(indices, values, flags: one bool per entry when ``tail``) of a partner's data
        message, or None (err set, or an agreement pass)."""
        theirs = self._check(buf)
        if theirs is None or self.headers_only:
            return None
        try:
            idx, val, rest = wire.decode(self.space, buf, theirs, *self.types, tail=int(theirs["count"]) if tail else 0)
        except ValueError as e:
            self.err = Error(1, f"rank {self.link.rank}: malformed message: {e}")
            return None
        return idx, val, self.space.view(rest, "bool") if tail else None

    def absorb(self, buf: Any, their_tags: int = 0) -> None:
        """Merge a partner's message into the current set (both partners end equal); their
        entries get ``their_tags``."""
        with self.stats.phase("merge"):
            got = self._decode(buf)
            if got is None:
                return
            t_idx, t_val, _ = got
            tb = self.space.tags(len(t_idx), their_tags) if their_tags else None
            self.idx, self.val, self.tags = self.space.merge(self.idx, self.val, t_idx, t_val, self.k, self.tags, tb)

    def adopt(self, buf: Any) -> None:
        """Take a later set from a message whose flags mark the entries that came from this
        rank's current set: those keep their tags, the others get none."""
        with self.stats.phase("merge"):
            got = self._decode(buf, tail=True)
            if got is None:
                return
            idx, val, flags = got
            try:
                tags = self.space.adopt_tags(self.idx, self.tags, idx, flags)
            except ValueError as e:
                self.err = Error(1, f"rank {self.link.rank}: malformed message: {e}")
                return
            self.idx, self.val, self.tags = idx, val, tags

    def flags(self, bit: int) -> Any:
        """The tail marking the entries of the current set that carry ``bit``."""
        return self.space.bytes_of((self.tags & bit) != 0) if self.live() else None

    # -- schedules ------------------------------------------------------------------
    def run(self, hierarchical: bool | None = None) -> None:
        """This rank's part of the schedule (default: this call's). Afterwards idx/val hold the
        global k-set (or err the common error) and tags mark what this rank's contribution
        and rounding errors in it are.

        Flat: the butterfly over all ranks. Hierarchical: inside each host the butterfly with
        lossless raw messages (shared memory), then the hosts' leaders alone run the butterfly
        across hosts in the call's wire format (one k-set per round through each host's
        port), then every leader passes the result down a binomial tree inside its host.
        """
        hierarchical = self.hierarchical if hierarchical is None else hierarchical
        if not hierarchical:
            self._butterfly(self.link, self.code, self.pack, FOLDED)
            return
        for sub in (self.layout.local, self.layout.leaders):
            if sub is not None:
                sub.activity = self.link.activity
        self._butterfly(self.layout.local, 0, 0, FOLDED, then=self._across_hosts)

    def _butterfly(self, link: Transport, code: int, pack: int, fold_bit: int, then: Any = None) -> None:
        """The fold-in, the log2(p2) exchange rounds, ``then()``, and the fold-back over ``link``
        (p2: the largest power of two <= its size; rank p2 + i folds into rank i)."""
        me, p = link.rank, link.size
        p2 = 1 << (p.bit_length() - 1)
        if me >= p2:
            self.send(me - p2, self.message(ROUNDED, code=code, pack=pack), link)
            self.adopt(self.recv(me - p2, link, idle=True))  # while the others run the rounds
            return
        if me + p2 < p:
            self.absorb(self.recv(me + p2, link), fold_bit)
        step, rnd = 1, 0
        while step < p2:
            # the partial sum of this rank's group (ranks me - me % step ...) is rounded by
            # its lowest rank, which owns the rounding error
            self.absorb(self.exchange(link, me ^ step, (ROUNDED << rnd) if me % step == 0 else 0, code, pack))
            step, rnd = step << 1, rnd + 1
        if then is not None:
            then()
        if me + p2 < p:  # the result itself, lossless, marking what the folded rank's set carried
            self.send(me + p2, self.message(tail=self.flags(fold_bit), code=0, pack=pack), link)

    def _across_hosts(self) -> None:
        """Hierarchical: the leaders' butterfly (this host's set tagged HOST), then the result
        down the host: local rank j (below the host's p2) gets it from j minus its lowest set
        bit and forwards the same message."""
        local, leaders = self.layout.local, self.layout.leaders
        if leaders is not None:
            if self.live():
                self.tags = self.tags | HOST
            self._butterfly(leaders, self.code, self.pack, FOLDED_HOST)
        me, p2 = local.rank, 1 << (local.size.bit_length() - 1)
        if me == 0:
            if p2 == 1:
                return
            buf, low = self.message(tail=self.flags(HOST), code=0, pack=0), p2
        else:
            low = me & -me
            buf = self.recv(me - low, local, idle=True)  # while the leaders run the rounds across hosts
            self.adopt(buf)
        step = low >> 1
        while step:
            self.send(me + step, buf, local)
            step >>= 1

    def feedback(self) -> tuple[Any, Any, list[tuple[int, Any, Any]]]:
        """(indices, tags, rounding-error records) for Space.settle after a successful run: the
        final set with its tags, and the (tag bit, indices, errors) of each rounding this
        rank owns."""
        return self.idx, self.tags, self.errors

    def agree(self) -> None:
        """The communicator's default schedule with headers alone: afterwards every rank holds
        the same error (err), or none when all ranks called the same collective with agreeing
        arguments."""
        self.headers_only = True
        try:
            self.run(self.layout.hierarchical)
        finally:
            self.headers_only = False


def begin(link: Transport, op: str) -> int:
    """Number this call of ``op`` on ``link`` and name it for the transport's messages."""
    seq = link.next_sequence()
    link.activity = f"{op} call #{seq}"
    link.topology()  # a communicator's first call finds its hosts (collective)
    return seq


def agree(link: Transport, header: np.ndarray, err: Error | None, stats: CommStats | None = None) -> None:
    """The agreement pass of a collective without pairwise data (dense): raises the same
    error on every rank, or returns when all ranks agree."""
    side = Butterfly(link, spaces.HOST, header, *spaces.HOST.empty_set(), err, stats or CommStats())
    side.agree()
    if side.err is not None:
        side.err.raise_()


def start(op: str, link: Transport, space: Space, x: Any, k: int | None, density: float | None, residual: Any,
          values: str, average: bool, align: bool, stats: CommStats, wire_format: str = "fp32",
          hierarchical: bool | str | None = None) -> tuple[Butterfly, Any, Any]:
    """Validate this rank's arguments, select its k-set (fused with the residual), and set
    up its side of the call in the message space. A rank with bad input starts in the
    error state with an empty set, so it still takes part in every message. With
    ``align`` (benchmarks) an agreement pass runs here, after selection, so that "comm"
    measures the network and the wait for slower ranks goes to "skew". So does one when
    the call's schedule (``hierarchical``) is not the communicator's default: ranks that
    disagree on it then raise MismatchError instead of waiting on different partners.

    Returns (this rank's side, x and residual as arrays of ``space``).
    """
    sets = spaces.message_space(space)
    seq = begin(link, op)
    with stats.phase("select"):

        default = link.topology().hierarchical

        def check():
            hier = arguments.schedule(hierarchical, link.topology())
            xs, rs = space.adopt(x), None if residual is None else space.adopt(residual)
            return (xs, rs, *arguments.check_sparse(space, xs, k, density, rs, values, wire_format), hier)

        err, checked = local_error(link, check)
        if err is None:
            xs, rs, kk, dtype, hier = checked
            idx, val = (spaces.move(a, space, sets) for a in space.select(xs, kk, rs))
        else:
            xs = rs = dtype = None
            kk, hier = 0, default
            idx, val = sets.empty_set()
    header = wire.make_header(op=op, seq=seq, m=-1 if err else len(xs), k=kk, count=len(idx), rank=link.rank,
                              dtype=dtype, average=average, values=values, align=align, wire=wire_format,
                              hierarchical=hier)
    side = Butterfly(link, sets, header, idx, val, err, stats, hier)
    if align or hier != default:
        with stats.phase("skew"):
            side.agree()
    return side, xs, rs


def gtopk_allreduce(x: Any, k: int | None = None, density: float | None = None, average: bool = False,
                    residual: Any = None, values: str = "merged", comm: MPI.Comm | Transport | None = None,
                    align: bool = False, wire: str = "fp32", hierarchical: bool | str | None = None) -> SparseResult:
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
    not slower ranks' selection (that wait goes to ``stats.skew_s``). ``hierarchical``:
    the schedule when ranks share hosts (see the module docstring): None (default) the
    communicator's (GTOPK_HIERARCHICAL, auto unless set), "auto", True or False; every
    rank must pass the same.
    """
    t0 = time.perf_counter()
    link, space, stats = runtime.transport(comm), spaces.space_for(x), CommStats()
    with space.activate():
        bf, xs, rs = start("gtopk_allreduce", link, space, x, k, density, residual, values, average, align, stats,
                           wire, hierarchical)
        agreed = align or bf.hierarchical != bf.layout.hierarchical  # start() ran an agreement pass
        if not (agreed and bf.err is not None):  # (after it an error is everyone's)
            bf.run()
        if bf.err is not None:
            bf.err.raise_()
        sets, m = bf.space, int(bf.header["m"][0])
        g_idx = spaces.move(bf.idx, sets, space)
        g_val = bf.val
        if values == "exact":
            g_val = spaces.move(space.gather(rs if rs is not None else xs, g_idx), space, sets)
            with stats.phase("comm"):
                g_val = sets.allreduce(bf.layout.tree() if bf.hierarchical else link, g_val)
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

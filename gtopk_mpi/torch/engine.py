"""The background engine of gtopk_mpi.torch: ops matched by name, run in one global order.

Hooks fire in different orders on different ranks, so an op is never sent to MPI
when it is submitted. Each submitted op announces a Request (requests.py: name, op type,
dtype, shape, reduction, scale factors, root, device, compression, group size, or
the error its local checks raised). A single background thread negotiates in
sessions: a rank with work rings every other rank (a one-integer message), and all
engines then allgather their pending requests round after round; the names pending
on every rank run on the engine's data transport, in the order the lowest such rank
submitted them (an op a rank submitted before its barrier runs before that barrier); the
rest wait for the next round; the session ends, on every rank in the same round, when no
rank has anything pending. Idle engines send nothing. Requests that disagree become the
same TensorMismatchError on every rank (Horovod's checks and wording, in its order:
data type, operation, shape, scale factors, root rank, device), a request whose local
checks failed on one rank becomes that ValueError on every rank, and the engine
carries on. All traffic of the front end happens on this one thread, through the
engine's own Transports (gtopk_mpi.transport: MPI today).

Process sets: every request names its set (0: all ranks); a name is ready once every
member has it, and runs on the set's own data transport (a split of the engine's, made
by the ADD_PROCESS_SET op, which every rank runs in the same place of the order), so
ranks outside the set neither take part nor wait. Join: a rank in join() stands in for
the global set's allreduces with zeros (of the shape, dtype, op and compression the
others announced); other ops that a joined rank lacks fail on the others with Horovod's
"not supported with Join" text; the JOIN op runs once every rank has joined and
returns the rank whose join was seen last (by negotiation round, then rank).

Stalls: a rank whose script is late still answers the negotiation (its engine thread
runs beside it), so the others see which ranks have not submitted an op: after
GTOPK_STALL_CHECK_TIME_SECONDS each waiting rank warns, naming them; after
GTOPK_STALL_SHUTDOWN_TIME_SECONDS (default off) the op fails on every rank, late
submissions of it too. A rank that leaves the job fails every pending op with
failures.PeerGoneError.

Knobs (environment): GTOPK_CYCLE_TIME (ms between rounds that found nothing to
run, default 1), GTOPK_STALL_CHECK_TIME_SECONDS (default 60; 0 disables),
GTOPK_STALL_SHUTDOWN_TIME_SECONDS, GTOPK_TIMELINE (timeline.py).

What runs here is thread and negotiation only: what a request holds and how requests are
checked is requests.py, how ops are named and submitted is submission.py, the trace is
timeline.py, process-set bookkeeping for callers is process_sets.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import config, failures
from ..transport import EngineTransport
from . import requests
from .compression import from_description
from .reduction import OP_NAMES, reduce_flat
from .requests import (
    DTYPE_NAMES,
    DUPLICATE_NAME_ERROR,
    JOIN_KEY,
    HorovodInternalError,
    Key,
    OpType,
    Request,
    check_requests,
    join_error,
    key_of,
)
from .timeline import Timeline

log = logging.getLogger(__name__)


def no_run(link: EngineTransport, reqs: list[Request]) -> None:
    """The work function of an op with nothing to run (barrier, shutdown, a failed request)."""
    return None


@dataclass
class Work:
    """One submitted op: its request, what to run once agreed, and its outcome."""

    request: Request
    run: Callable[[EngineTransport, list[Request]], object]  # (transport, every rank's request) -> result
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None
    submitted: float = field(default_factory=time.monotonic)
    seq: int = 0                 # this rank's submission number (set by Engine.submit)
    warned: bool = False

    def wait(self) -> Any:  # what the op's work function returned
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


@dataclass
class ProcessSetLink:
    """A registered process set: its ranks (sorted, in the engine's numbering) and, on its
    members, the transport its ops run on (None elsewhere)."""

    ranks: tuple[int, ...]
    link: EngineTransport | None


class Engine:
    """Owns the front end's transports (``control`` for negotiation, ``link`` for the ops'
    data, one split of it per process set) and the one thread that uses them."""

    def __init__(self, control: EngineTransport, link: EngineTransport):
        self.control, self.link = control, link
        self._cv = threading.Condition()
        self._pending: dict[Key, Work] = {}
        self._in_flight: set[Key] = set()
        self._stalled: dict[Key, BaseException] = {}  # names failed by the stall shutdown
        self._epoch = 0                               # negotiation sessions so far (every rank counts alike)
        self._round = 0                               # negotiation rounds so far (every rank counts alike)
        self._seq = 0                                 # ops submitted on this rank
        self._joined: dict[int, int] = {}             # rank -> the round its JOIN was first seen
        self._dead: BaseException | None = None       # the engine cannot run ops any more (a rank left)
        self._halt = False                            # interpreter exit: stop without a collective shutdown
        self._sets = {0: ProcessSetLink(tuple(range(link.size)), link)}
        self._next_set = 1
        self._cycle_s = config.CYCLE_TIME.get() / 1e3
        self._stall_s, self._stall_end_s = failures.stall_limits()
        control.activity = "the gtopk_mpi.torch engine's negotiation"
        self.timeline = Timeline(link.rank == 0, config.TIMELINE.get())
        self._thread = threading.Thread(target=self._loop, name="gtopk_mpi.torch engine", daemon=True)
        self._stopped = False
        self._thread.start()
        failures.on_exit(self.halt)

    # -- process sets (called from the engine thread by the ops that change them) ----
    def members(self, process_set: int) -> tuple[int, ...] | None:
        """The ranks of a registered set, or None."""
        entry = self._sets.get(process_set)
        return None if entry is None else entry.ranks

    def add_set(self, ranks: tuple[int, ...]) -> int | None:
        """Register a set (collective over all ranks, in op order); None if one with these
        ranks exists (then nothing is created anywhere)."""
        if any(entry.ranks == ranks for entry in self._sets.values()):
            return None
        link = self.link.split(0 if self.link.rank in ranks else None)
        set_id, self._next_set = self._next_set, self._next_set + 1
        self._sets[set_id] = ProcessSetLink(ranks, link)
        return set_id

    def remove_set(self, set_id: int) -> int | None:
        entry = self._sets.pop(set_id, None) if set_id != 0 else None
        if entry is None:
            return None
        if entry.link is not None:
            entry.link.close()
        return set_id

    def submit(self, work: Work) -> Work:
        key = key_of(work.request)
        with self._cv:
            if self._stopped:
                raise ValueError("gtopk_mpi.torch has been shut down; call init() first")
            if key in self._in_flight:
                raise ValueError(DUPLICATE_NAME_ERROR.format(op=work.request.op_type.lower()))
            error = self._dead or self._stalled.get(key)
            if error is not None:
                work.error = error
                work.done.set()
                return work
            self._in_flight.add(key)
            self._seq += 1
            work.seq = self._seq
            self._pending[key] = work
            self._cv.notify()
        return work

    def check_free(self, keys: list[Key], op_type: str) -> None:
        """Horovod's duplicate-name error if one of ``keys`` is still in flight on this rank
        (checked before the op's inputs are copied, so the window in which an op submitted
        just before could complete first stays as short as Horovod's)."""
        with self._cv:
            if any(k in self._in_flight for k in keys):
                raise ValueError(DUPLICATE_NAME_ERROR.format(op=op_type.lower()))

    def stop(self) -> list[Any]:
        """Collective: every rank's engine runs a SHUTDOWN op, then its thread ends (at once
        when a rank has left the job). Returns the transports for the caller to release."""
        work = self.submit(Work(requests.shutdown(), no_run))
        if self._dead is None:
            work.wait()
        self._thread.join()
        sets = [e.link for i, e in sorted(self._sets.items()) if i != 0 and e.link is not None]
        return [self.control, self.link, *sets]

    def halt(self) -> None:
        """The interpreter is exiting without shutdown(): stop after the current round."""
        with self._cv:
            self._halt = True
            self._cv.notify()
        self._thread.join(timeout=5)

    # -- the engine thread ------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while self._idle():
                if self._session():
                    return
        except BaseException as e:  # noqa: BLE001 - a rank left (PeerGoneError) or a bug: fail, never hang
            with self._cv:
                self._dead = e
                works, self._pending = list(self._pending.values()), {}
                self._in_flight.clear()
            for w in works:
                w.error = e
                w.done.set()

    def _idle(self) -> bool:
        """Wait until this rank has work (then ring the others) or another rank rings for
        the next session. False: the interpreter is exiting."""
        while True:
            with self._cv:
                if self._halt:
                    return False
                if self._pending:
                    break
                self._cv.wait(0.002)
            while (msg := self.control.probe_any(lambda n: np.empty(n, np.uint8))) is not None:
                if int(msg[1].view(np.int64)[0]) == self._epoch + 1:
                    self._epoch += 1
                    return True
        self._epoch += 1
        bell = np.array([self._epoch], np.int64).view(np.uint8)
        for q in range(self.control.size):
            if q != self.control.rank:
                self.control.send(bell, q)
        return True

    def _session(self) -> bool:
        """Negotiation rounds until no rank has anything pending. True: shut down."""
        idle = self._cycle_s
        while True:
            now = time.monotonic()
            with self._cv:
                if self._halt:
                    return True
                mine = [(w.request, now - w.submitted, w.seq) for _, w in sorted(self._pending.items())]
            everyone = self.control.allgather_obj(mine)
            self._round += 1
            tables = [{key_of(r): (r, age, seq) for r, age, seq in reqs} for reqs in everyone]
            if not any(tables):
                return False
            ready, waiting = self._plan(tables)
            for key, have, standing_in in ready:
                if self._run(key, have, standing_in, tables):
                    return True
            self._stall_check(tables, waiting)
            if not ready:
                time.sleep(idle)
                idle = min(idle * 2, 0.01)
            else:
                idle = self._cycle_s

    def _plan(self, tables: list[dict[Key, tuple[Request, float, int]]]
              ) -> tuple[list[tuple[Key, list[int], list[int]]], list[tuple[Key, list[int]]]]:
        """Every rank's identical decision for this round: the keys to run, each with the
        ranks that submitted it and the joined members that stand in for it, in the order
        the lowest submitter submitted them; the keys left waiting, with the members that
        have not submitted them."""
        joined = [q for q, t in enumerate(tables) if JOIN_KEY in t]
        for q in joined:
            self._joined.setdefault(q, self._round)
        ready, waiting = [], []
        for key in sorted(set().union(*tables)):
            have = [q for q, t in enumerate(tables) if key in t]
            members = self.members(key[0]) or tuple(have)
            missing = [q for q in members if q not in have]
            stand_in = key != JOIN_KEY and bool(have) and set(missing) <= set(joined)
            if not missing or stand_in:
                ready.append((key, have, missing))
            else:
                waiting.append((key, missing))
        ready.sort(key=lambda item: (tables[item[1][0]][item[0]][2], item[0]))
        return ready, waiting

    def _run(self, key: Key, have: list[int], standing_in: list[int],
             tables: list[dict[Key, tuple[Request, float, int]]]) -> bool:
        reqs = [tables[q][key][0] for q in have]
        error = check_requests(reqs)
        if error is None and standing_in:
            error = join_error(key, reqs[0])
        with self._cv:
            work = self._pending.pop(key, None)
        if work is None and error is None and self.link.rank in standing_in:
            work = self._stand_in(reqs[0])
        if work is None:  # not a member, failed with its group earlier in this round, or nothing to add
            return False
        started = time.monotonic()
        try:
            if error is not None:
                raise error
            link = self._sets[key[0]].link
            assert link is not None  # work pending here: this rank is a member
            work.result = work.run(link, reqs)
            if key == JOIN_KEY:  # the rank whose join was seen last
                work.result = max(self._joined, key=lambda q: (self._joined[q], q))
                self._joined.clear()
        except failures.PeerGoneError:
            raise
        except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
            work.error = e
        self.timeline.record(work.request, work.submitted, started, time.monotonic())
        shutdown = work.request.op_type == OpType.SHUTDOWN
        with self._cv:
            self._in_flight.discard(key)
            self._stopped |= shutdown
        work.done.set()
        if error is not None and work.request.group:  # the rest of a failed group fails alike
            self._fail_group(work.request, error)
        return shutdown

    def _stand_in(self, request: Request) -> Work | None:
        """What a joined rank runs for an allreduce it did not submit (one join_error
        allows): zeros. None for a barrier (nothing to run)."""
        if request.op_type != OpType.ALLREDUCE:
            return None
        dtype = next(d for d, n in DTYPE_NAMES.items() if n == request.dtype)
        op = next(o for o, n in OP_NAMES.items() if n == request.reduce_op)
        comp = from_description(request.compression)
        zeros = torch.zeros(int(np.prod(request.shape, dtype=np.int64)), dtype=dtype)

        def run(link: EngineTransport, reqs: list[Request]) -> torch.Tensor:
            return reduce_flat(link, zeros, op, comp, request.prescale, request.postscale)[0]

        return Work(request, run)

    def _fail_group(self, request: Request, error: BaseException) -> None:
        base = request.name.rsplit(".", 1)[0]
        with self._cv:
            siblings = [k for k, w in self._pending.items() if k[0] == request.process_set
                        and k[1].rsplit(".", 1)[0] == base and w.request.group]
            works = [self._pending.pop(k) for k in siblings]
            self._in_flight.difference_update(siblings)
        for w in works:
            w.error = error
            w.done.set()

    def _stall_check(self, tables: list[dict[Key, tuple[Request, float, int]]],
                     waiting: list[tuple[Key, list[int]]]) -> None:
        """Ops some members have submitted and others not: warn after the stall time (each
        waiting rank, naming the missing ones); past the shutdown time fail the op on every
        rank (all ranks decide alike, on the oldest age any rank reported)."""
        me = self.link.rank
        for key, missing in waiting:
            name = key[1]
            oldest = max(t[key][1] for t in tables if key in t)
            if self._stall_end_s and oldest > self._stall_end_s:
                op = next(t[key][0].op_type for t in tables if key in t)
                error = HorovodInternalError(
                    f"{op} '{name}' stalled for {oldest:.0f} s: ranks {missing} did not submit it "
                    "(GTOPK_STALL_SHUTDOWN_TIME_SECONDS)")
                with self._cv:
                    self._stalled[key] = error
                    work = self._pending.pop(key, None)
                    self._in_flight.discard(key)
                if work is not None:
                    work.error = error
                    work.done.set()
                continue
            with self._cv:
                work = self._pending.get(key)
            if self._stall_s and work is not None and not work.warned and key in tables[me] \
                    and tables[me][key][1] > self._stall_s:
                work.warned = True
                log.warning("gtopk_mpi.torch: rank %s: %s '%s' has waited %.0f s for ranks %s, which have not "
                            "submitted it (one rank is late, skipped an op, or submitted another name)", me,
                            work.request.op_type, name, tables[me][key][1], missing)


# -- the front end's one engine -----------------------------------------------------------

_engine: Engine | None = None


def start(control: EngineTransport, link: EngineTransport) -> None:
    """Run the engine on two Transports of its own: negotiation, and the ops' data."""
    global _engine
    _engine = Engine(control, link)


def stop() -> list[Any]:
    """Collective: stop the engine; returns its transports (for the caller to release)."""
    global _engine
    engine, _engine = _engine, None
    return engine.stop() if engine is not None else []


def running() -> bool:
    return _engine is not None


def current() -> Engine:
    """The running engine; Horovod's ValueError before init()."""
    if _engine is None:
        raise ValueError("gtopk_mpi.torch has not been initialized; use hvd.init().")
    return _engine


def submit(work: Work) -> Work:
    return current().submit(work)

"""The background engine of gtopk_mpi.torch: ops matched by name, run in one global order.

Hooks fire in different orders on different ranks, so an op is never sent to MPI
when it is submitted. Each submitted op announces a Request (name, op type,
dtype, shape, reduction, scale factors, root, device, compression, group size, or
the error its local checks raised). A single background thread negotiates in
sessions: a rank with work rings every other rank (a one-integer message), and all
engines then allgather their pending requests round after round; the names pending
on every rank run, in sorted-name order, on the engine's data transport; the rest
wait for the next round; the session ends, on every rank in the same round, when no
rank has anything pending. Idle engines send nothing. Requests that disagree become the
same TensorMismatchError on every rank (Horovod's checks and wording, in its order:
data type, operation, shape, scale factors, root rank, device), a request whose local
checks failed on one rank becomes that ValueError on every rank, and the engine
carries on. All traffic of the front end happens on this one thread, through the
engine's own Transports (gtopk_mpi.transport: MPI today).

Stalls: a rank whose script is late still answers the negotiation (its engine thread
runs beside it), so the others see which ranks have not submitted an op: after
GTOPK_STALL_CHECK_TIME_SECONDS each waiting rank warns, naming them; after
GTOPK_STALL_SHUTDOWN_TIME_SECONDS (default off) the op fails on every rank, late
submissions of it too. A rank that leaves the job fails every pending op with
failures.PeerGoneError.

Knobs (environment): GTOPK_CYCLE_TIME (ms between rounds that found nothing to
run, default 1), GTOPK_STALL_CHECK_TIME_SECONDS (default 60; 0 disables),
GTOPK_STALL_SHUTDOWN_TIME_SECONDS, GTOPK_TIMELINE (file: rank 0 writes a Chrome
trace, chrome://tracing or Perfetto, with each op's NEGOTIATE span from submission
to agreement and its RUN span).
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import config, failures
from ..agreement import MismatchError


class HorovodInternalError(RuntimeError):
    """An error inside a collective (Horovod's name); raised on every rank alike."""


class TensorMismatchError(HorovodInternalError, MismatchError):
    """Ranks submitted the same named op with disagreeing arguments."""


#: Horovod's names of the dtypes an allreduce takes, and of those allgather / broadcast take
DTYPE_NAMES = {torch.int32: "HOROVOD_INT32", torch.int64: "HOROVOD_INT64", torch.float16: "HOROVOD_FLOAT16",
               torch.float32: "HOROVOD_FLOAT32", torch.float64: "HOROVOD_FLOAT64"}
BROADCAST_DTYPES = {**DTYPE_NAMES, torch.uint8: "HOROVOD_UINT8", torch.int8: "HOROVOD_INT8",
                    torch.int16: "HOROVOD_INT16", torch.bool: "HOROVOD_BOOL"}

DUPLICATE_NAME_ERROR = ("Requested to {op} a tensor with the same name as another tensor that is currently "
                        "being processed. If you want to request another tensor, use a different tensor name.")


@dataclass(frozen=True)
class Request:
    """What one rank announces for one named op (small and picklable)."""

    name: str
    op_type: str                 # ALLREDUCE, ALLGATHER, BROADCAST, BARRIER, JOIN, SHUTDOWN
    dtype: str = ""              # HOROVOD_FLOAT32, ...
    shape: tuple[int, ...] = ()
    reduce_op: str = ""
    prescale: float = 1.0
    postscale: float = 1.0
    root: int = -1
    device: str = "CPU"
    compression: str = ""
    extra: float = 0.0           # join: this rank's arrival time
    group: int = 0               # grouped ops: how many tensors the group has
    error: str = ""              # what this rank's local checks raised ("rank R: ..."): every rank raises it
    error_type: str = ""         # ValueError or NotImplementedError


# Horovod's checks, in its order; {op} is the op type, {a} and {b} the two values seen.
_CHECKS_BEFORE_SHAPE = (
    ("group", "Mismatched {op} group sizes: One rank grouped {a} tensors, but another rank grouped {b} tensors."),
    ("dtype", "Mismatched data types: One rank had type {a}, but another rank had type {b}."),
    ("op_type", "Mismatched MPI operations: One rank did an {a}, but another rank did an {b}."),
    ("reduce_op", "Mismatched {op} reduction operations: One rank did a {a}, but another rank did a {b}."),
)
_CHECKS_AFTER_SHAPE = (
    ("prescale", "Mismatched prescale factors: One rank sent factor {a}, but another rank sent factor {b}."),
    ("postscale", "Mismatched postscale factors: One rank sent factor {a}, but another rank sent factor {b}."),
    ("root", "Mismatched {op} root ranks: One rank specified root rank {a}, but another rank specified root rank {b}."),
    ("device", "Mismatched {op} CPU/GPU device selection: One rank specified device {a}, but another rank "
               "specified device {b}."),
    ("compression", "Mismatched {op} compression: One rank used {a}, but another rank used {b}."),
)


def _first_difference(reqs: list[Request], checks) -> str | None:
    first = reqs[0]
    for attr, text in checks:
        for r in reqs[1:]:
            if getattr(r, attr) != getattr(first, attr):
                return text.format(op=first.op_type, a=getattr(first, attr), b=getattr(r, attr))
    return None


def _shape_difference(reqs: list[Request]) -> str | None:
    first = reqs[0]
    if first.op_type in ("ALLREDUCE", "BROADCAST"):
        for r in reqs[1:]:
            if r.shape != first.shape:
                return (f"Mismatched {first.op_type} tensor shapes: One rank sent a tensor of shape "
                        f"{list(first.shape)}, but another rank sent a tensor of shape {list(r.shape)}.")
    if first.op_type == "ALLGATHER":  # dimension 0 may differ
        if len(first.shape) == 0:
            return "Rank zero tried to ALLGATHER a rank-zero tensor."
        for r in reqs[1:]:
            if len(r.shape) != len(first.shape):
                return (f"Mismatched ALLGATHER tensor shapes: One rank sent a tensor of rank {len(first.shape)}, "
                        f"but another rank sent a tensor of rank {len(r.shape)}.")
            for d in range(1, len(first.shape)):
                if r.shape[d] != first.shape[d]:
                    return (f"Mismatched ALLGATHER tensor shapes: One rank sent a tensor with dimension {d} "
                            f"equal to {first.shape[d]}, but another rank sent a tensor with dimension {d} "
                            f"equal to {r.shape[d]}.")
    return None


def check_requests(reqs: list[Request]) -> BaseException | None:
    """The error every rank raises for one name: the lowest rank's failed local check, else
    Horovod's consistency checks over every rank's request (None: all agree)."""
    failed = next((r for r in reqs if r.error), None)
    if failed is not None:
        return (NotImplementedError if failed.error_type == "NotImplementedError" else ValueError)(failed.error)
    text = (_first_difference(reqs, _CHECKS_BEFORE_SHAPE) or _shape_difference(reqs)
            or _first_difference(reqs, _CHECKS_AFTER_SHAPE))
    return TensorMismatchError(text) if text is not None else None


@dataclass
class Work:
    """One submitted op: its request, what to run once agreed, and its outcome."""

    request: Request
    run: Callable[[Any, list[Request]], object]  # (transport, every rank's request) -> result
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None
    submitted: float = field(default_factory=time.monotonic)
    warned: bool = False

    def wait(self) -> object:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


class Engine:
    """Owns the front end's transports (``control`` for negotiation, ``link`` for the ops'
    data) and the one thread that uses them."""

    def __init__(self, control: Any, link: Any):
        self.control, self.link = control, link
        self._cv = threading.Condition()
        self._pending: dict[str, Work] = {}
        self._in_flight: set[str] = set()
        self._stalled: dict[str, BaseException] = {}  # names failed by the stall shutdown
        self._epoch = 0                               # negotiation sessions so far (every rank counts alike)
        self._dead: BaseException | None = None       # the engine cannot run ops any more (a rank left)
        self._halt = False                            # interpreter exit: stop without a collective shutdown
        self._cycle_s = config.CYCLE_TIME.get() / 1e3
        self._stall_s, self._stall_end_s = failures.stall_limits()
        control.activity = "the gtopk_mpi.torch engine's negotiation"
        self._timeline = None
        path = config.TIMELINE.get()
        if path and link.rank == 0:
            self._timeline = open(path, "w")
            self._timeline.write("[\n")
            self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="gtopk_mpi.torch engine", daemon=True)
        self._stopped = False
        self._thread.start()
        failures.on_exit(self.halt)

    def submit(self, work: Work) -> Work:
        name = work.request.name
        with self._cv:
            if self._stopped:
                raise ValueError("gtopk_mpi.torch has been shut down; call init() first")
            if name in self._in_flight:
                raise ValueError(DUPLICATE_NAME_ERROR.format(op=work.request.op_type.lower()))
            error = self._dead or self._stalled.get(name)
            if error is not None:
                work.error = error
                work.done.set()
                return work
            self._in_flight.add(name)
            self._pending[name] = work
            self._cv.notify()
        return work

    def stop(self) -> None:
        """Collective: every rank's engine runs a SHUTDOWN op, then its thread ends (at once
        when a rank has left the job)."""
        work = self.submit(Work(Request("__gtopk_shutdown__", "SHUTDOWN"), lambda link, reqs: None))
        if self._dead is None:
            work.wait()
        self._thread.join()

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
                mine = [(w.request, now - w.submitted) for _, w in sorted(self._pending.items())]
            everyone = self.control.allgather_obj(mine)
            tables = [{r.name: (r, age) for r, age in reqs} for reqs in everyone]
            if not any(tables):
                return False
            ready = sorted(set.intersection(*(set(t) for t in tables)))
            for name in ready:
                if self._run(name, [t[name][0] for t in tables]):
                    return True
            self._stall_check(tables)
            if not ready:
                time.sleep(idle)
                idle = min(idle * 2, 0.01)
            else:
                idle = self._cycle_s

    def _run(self, name: str, reqs: list[Request]) -> bool:
        with self._cv:
            work = self._pending.pop(name, None)
        if work is None:  # failed with the rest of its group earlier in this round
            return False
        started = time.monotonic()
        error = check_requests(reqs)
        try:
            if error is not None:
                raise error
            work.result = work.run(self.link, reqs)
        except failures.PeerGoneError:
            raise
        except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
            work.error = e
        self._trace(work, started, time.monotonic())
        shutdown = work.request.op_type == "SHUTDOWN"
        with self._cv:
            self._in_flight.discard(name)
            self._stopped |= shutdown
        work.done.set()
        if error is not None and work.request.group:  # the rest of a failed group fails alike
            self._fail_group(work.request, error)
        return shutdown

    def _fail_group(self, request: Request, error: BaseException) -> None:
        base = request.name.rsplit(".", 1)[0]
        with self._cv:
            siblings = [n for n in self._pending if n.rsplit(".", 1)[0] == base and self._pending[n].request.group]
            works = [self._pending.pop(n) for n in siblings]
            self._in_flight.difference_update(siblings)
        for w in works:
            w.error = error
            w.done.set()

    def _trace(self, work: Work, started: float, ended: float) -> None:
        if self._timeline is None:
            return
        r = work.request
        for phase, t0, t1, tid in (("NEGOTIATE", work.submitted, started, 0), ("RUN", started, ended, 1)):
            event = {"name": f"{phase} {r.name}", "cat": r.op_type, "ph": "X", "pid": 0, "tid": tid,
                     "ts": round((t0 - self._t0) * 1e6, 1), "dur": round((t1 - t0) * 1e6, 1),
                     "args": {"dtype": r.dtype, "shape": list(r.shape), "compression": r.compression}}
            self._timeline.write(json.dumps(event) + ",\n")
        if r.op_type == "SHUTDOWN":
            self._timeline.write("{}]\n")
            self._timeline.close()
            self._timeline = None
        else:
            self._timeline.flush()

    def _stall_check(self, tables: list[dict[str, tuple[Request, float]]]) -> None:
        """Ops some ranks have submitted and others not: warn after the stall time (each
        waiting rank, naming the missing ones); past the shutdown time fail the op on every
        rank (all ranks decide alike, on the oldest age any rank reported)."""
        names = set().union(*tables) - set.intersection(*(set(t) for t in tables))
        for name in sorted(names):
            missing = [q for q, t in enumerate(tables) if name not in t]
            oldest = max(t[name][1] for t in tables if name in t)
            if self._stall_end_s and oldest > self._stall_end_s:
                op = next(t[name][0].op_type for t in tables if name in t)
                error = HorovodInternalError(
                    f"{op} '{name}' stalled for {oldest:.0f} s: ranks {missing} did not submit it "
                    "(GTOPK_STALL_SHUTDOWN_TIME_SECONDS)")
                with self._cv:
                    self._stalled[name] = error
                    work = self._pending.pop(name, None)
                    self._in_flight.discard(name)
                if work is not None:
                    work.error = error
                    work.done.set()
                continue
            with self._cv:
                work = self._pending.get(name)
            if self._stall_s and work is not None and not work.warned and name in tables[self.link.rank] \
                    and tables[self.link.rank][name][1] > self._stall_s:
                work.warned = True
                print(f"gtopk_mpi.torch: rank {self.link.rank}: {work.request.op_type} '{name}' has waited "
                      f"{tables[self.link.rank][name][1]:.0f} s for ranks {missing}, which have not submitted it "
                      "(one rank is late, skipped an op, or submitted another name)", file=sys.stderr, flush=True)


# -- the front end's one engine -----------------------------------------------------------

_engine: Engine | None = None
_noname = itertools.count()


def start(control: Any, link: Any) -> None:
    """Run the engine on two Transports of its own: negotiation, and the ops' data."""
    global _engine
    _engine = Engine(control, link)


def stop() -> tuple[Any, Any]:
    """Collective: stop the engine; returns its transports (for the caller to release)."""
    global _engine
    engine, _engine = _engine, None
    engine.stop()
    return engine.control, engine.link


def running() -> bool:
    return _engine is not None


def current() -> Engine:
    """The running engine; Horovod's ValueError before init()."""
    if _engine is None:
        raise ValueError("gtopk_mpi.torch has not been initialized; use hvd.init().")
    return _engine


def submit(work: Work) -> Work:
    return current().submit(work)


def submit_checked(op_type: str, names: list[str], build: Callable[[], list[Work]], group: int = 0) -> list[Work]:
    """Submit the works ``build()`` makes for ``names``. If this rank's local checks in it
    raise, submit the names as failed requests instead: the engine then raises that error
    on every rank for them, so no rank waits on one that raised alone."""
    try:
        works = build()
    except (ValueError, NotImplementedError) as e:
        text = f"rank {current().link.rank}: {e}"
        works = [Work(Request(n, op_type, group=group, error=text, error_type=type(e).__name__),
                      lambda link, reqs: None) for n in names]
    return [submit(w) for w in works]


def op_name(name: str | None, kind: str) -> str:
    """``name``, or a fresh one for an unnamed op (every rank numbers its unnamed ops alike)."""
    return name if name is not None else f"{kind}.noname.{next(_noname)}"

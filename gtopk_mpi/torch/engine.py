"""The background engine of gtopk_mpi.torch: ops matched by name, run in one global order.

Hooks fire in different orders on different ranks, so an op is never sent to MPI
when it is submitted. Each submitted op announces a Request (name, op type,
dtype, shape, reduction, scale factors, root, device, compression). A single
background thread repeatedly allgathers every rank's pending requests; the names
pending on every rank run, in sorted-name order, on the engine's private
communicator; the rest wait for the next round. Requests that disagree become the
same TensorMismatchError on every rank (Horovod's checks and wording, in its
order: data type, operation, shape, scale factors, root rank, device), and the
engine carries on. All traffic of the front end happens on this one thread, through
the engine's own Transport (gtopk_mpi.transport: MPI today).

Knobs (environment): GTOPK_CYCLE_TIME (ms between rounds that found nothing to
run, default 1), GTOPK_STALL_CHECK_TIME_SECONDS (warn about ops pending on some
ranks only, default 60; 0 disables), GTOPK_TIMELINE (file: rank 0 writes a Chrome
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

import torch

from .. import config
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


# Horovod's checks, in its order; {op} is the op type, {a} and {b} the two values seen.
_CHECKS_BEFORE_SHAPE = (
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


def check_requests(reqs: list[Request]) -> str | None:
    """Horovod's consistency checks over every rank's request for one name (None: all agree)."""
    return (_first_difference(reqs, _CHECKS_BEFORE_SHAPE) or _shape_difference(reqs)
            or _first_difference(reqs, _CHECKS_AFTER_SHAPE))


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
    """Owns the front end's transport and the one thread that uses it."""

    def __init__(self, link: Any):
        self.link = link
        self._cv = threading.Condition()
        self._pending: dict[str, Work] = {}
        self._in_flight: set[str] = set()
        self._cycle_s = config.CYCLE_TIME.get() / 1e3
        self._stall_s = config.STALL_CHECK_TIME.get()
        self._timeline = None
        path = config.TIMELINE.get()
        if path and link.rank == 0:
            self._timeline = open(path, "w")
            self._timeline.write("[\n")
            self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="gtopk_mpi.torch engine", daemon=True)
        self._stopped = False
        self._thread.start()

    def submit(self, work: Work) -> Work:
        name = work.request.name
        with self._cv:
            if self._stopped:
                raise ValueError("gtopk_mpi.torch has been shut down; call init() first")
            if name in self._in_flight:
                raise ValueError(DUPLICATE_NAME_ERROR.format(op=work.request.op_type.lower()))
            self._in_flight.add(name)
            self._pending[name] = work
            self._cv.notify()
        return work

    def stop(self) -> None:
        """Collective: every rank's engine runs a SHUTDOWN op, then its thread ends."""
        work = self.submit(Work(Request("__gtopk_shutdown__", "SHUTDOWN"), lambda link, reqs: None))
        work.wait()
        self._thread.join()

    # -- the engine thread ------------------------------------------------------------
    def _loop(self) -> None:
        idle = self._cycle_s
        while True:
            with self._cv:
                while not self._pending:
                    self._cv.wait()
                batch = sorted(self._pending)
                requests = [self._pending[n].request for n in batch]
            everyone = self.link.allgather_obj(requests)
            tables = [{r.name: r for r in reqs} for reqs in everyone]
            ready = sorted(set.intersection(*(set(t) for t in tables)))
            if not ready:
                self._stall_check(tables)
                time.sleep(idle)
                idle = min(idle * 2, 0.01)
                continue
            idle = self._cycle_s
            for name in ready:
                with self._cv:
                    work = self._pending.pop(name)
                reqs = [t[name] for t in tables]
                text = check_requests(reqs)
                started = time.monotonic()
                try:
                    if text is not None:
                        raise TensorMismatchError(text)
                    work.result = work.run(self.link, reqs)
                except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
                    work.error = e
                self._trace(work, started, time.monotonic())
                with self._cv:
                    self._in_flight.discard(name)
                    if work.request.op_type == "SHUTDOWN":
                        self._stopped = True
                work.done.set()
                if work.request.op_type == "SHUTDOWN":
                    return

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

    def _stall_check(self, tables: list[dict[str, Request]]) -> None:
        if self._stall_s <= 0:
            return
        now = time.monotonic()
        with self._cv:
            late = [w for w in self._pending.values() if not w.warned and now - w.submitted > self._stall_s]
        for w in late:
            missing = [q for q, t in enumerate(tables) if w.request.name not in t]
            print(f"gtopk_mpi.torch: rank {self.link.rank}: {w.request.op_type} '{w.request.name}' has "
                  f"waited {now - w.submitted:.0f}s for ranks {missing}, which have not submitted it "
                  "(one rank skipped an op or submitted ops in a different order?)", file=sys.stderr, flush=True)
            w.warned = True


# -- the front end's one engine -----------------------------------------------------------

_engine: Engine | None = None
_noname = itertools.count()


def start(link: Any) -> None:
    """Run the engine on ``link`` (a Transport of its own)."""
    global _engine
    _engine = Engine(link)


def stop() -> Any:
    """Collective: stop the engine; returns its transport (for the caller to release)."""
    global _engine
    engine, _engine = _engine, None
    engine.stop()
    return engine.link


def running() -> bool:
    return _engine is not None


def current() -> Engine:
    """The running engine; Horovod's ValueError before init()."""
    if _engine is None:
        raise ValueError("gtopk_mpi.torch has not been initialized; use hvd.init().")
    return _engine


def submit(work: Work) -> Work:
    return current().submit(work)


def op_name(name: str | None, kind: str) -> str:
    """``name``, or a fresh one for an unnamed op (every rank numbers its unnamed ops alike)."""
    return name if name is not None else f"{kind}.noname.{next(_noname)}"

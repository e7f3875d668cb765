"""When a rank fails, leaves early or stalls: the job ends, or the waiting call raises, on
every rank; never a hang on expensive GPUs.

* An uncaught exception on any rank (the script's own error, outside our calls too):
  the failing rank prints its traceback as usual, tells every other rank one line about
  it, and aborts the job (MPI_Abort); the others print ``rank R failed (...)`` and end
  too. Within about a second. ``GTOPK_ABORT_ON_ERROR=0`` opts out: the failing rank
  then exits like any other (next point), so ranks waiting on it raise instead of
  ending, which a script that catches errors around its collectives may prefer; the
  price is that ranks not waiting on it run on until they next need it.
* A rank whose interpreter exits while gtopk_mpi is initialized (its script returned or
  called sys.exit without shutdown(), or a test framework exited it) tells every other
  rank. A rank waiting on it, or calling a collective with it later, raises
  :class:`PeerGoneError` naming it and the call (Horovod's "has been shut down"); a rank
  that had to abandon a wait that way exits with status 1 instead of finalizing MPI.
* A wait longer than ``GTOPK_STALL_CHECK_TIME_SECONDS`` prints one warning naming the
  call and the rank(s) waited for; ``GTOPK_STALL_SHUTDOWN_TIME_SECONDS`` (default 0: off)
  ends the job with that message after so long (the torch engine, which can still reach
  every rank, fails the stalled op on every rank instead).

The notices travel on a private duplicate of the library's communicator; one watcher
thread per process polls for them every 50 ms.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable

import numpy as np
from mpi4py import MPI

from . import config

FAILED, EXITED = "failed", "exited"
_TAG = 0x6766
_NOTICE_BYTES = 1024


class PeerGoneError(RuntimeError):
    """A rank this call waits on has left the job (its program exited or failed)."""


class _Watch:
    def __init__(self, comm: MPI.Comm):
        self.ctl = comm.Dup()
        self.rank, self.size = self.ctl.Get_rank(), self.ctl.Get_size()
        self.world_of = comm.Get_group().Translate_ranks(list(range(self.size)), MPI.COMM_WORLD.Get_group())
        self.gone: dict[int, str] = {}   # library rank -> why
        self.exit_hooks: list[Callable[[], None]] = []
        self._buf = np.zeros(_NOTICE_BYTES, np.uint8)
        self._req = self.ctl.Irecv([self._buf, MPI.BYTE], source=MPI.ANY_SOURCE, tag=_TAG)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gtopk_mpi failure watch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            status = MPI.Status()
            if self._req.Test(status):
                self._notice(status.Get_source(), bytes(self._buf[: status.Get_count(MPI.BYTE)]).decode())
                self._req = self.ctl.Irecv([self._buf, MPI.BYTE], source=MPI.ANY_SOURCE, tag=_TAG)
            else:
                self._stop.wait(0.05)

    def _notice(self, source: int, text: str) -> None:
        kind, _, why = text.partition("|")
        if kind == FAILED:
            print(f"gtopk_mpi: rank {self.rank}: rank {source} failed ({why}); ending the job", file=sys.stderr,
                  flush=True)
            time.sleep(0.2)  # the launcher forwards the line before the abort tears its I/O down
            MPI.COMM_WORLD.Abort(1)
        self.gone[source] = why

    def tell_everyone(self, kind: str, why: str) -> None:
        """Send a notice to every other rank (waits at most 1 s for the sends)."""
        data = f"{kind}|{why}".encode()[:_NOTICE_BYTES]
        reqs = [self.ctl.Isend([data, MPI.BYTE], dest=q, tag=_TAG) for q in range(self.size) if q != self.rank]
        deadline = time.monotonic() + 1.0
        while not MPI.Request.Testall(reqs) and time.monotonic() < deadline:
            time.sleep(0.001)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._req.Cancel()
        self._req.Wait()

    def close(self) -> None:
        self.stop()
        if not _abandoned:
            self.ctl.Free()


_watch: _Watch | None = None
_hooks_installed = False
_abandoned = False  # a wait was given up: MPI holds requests that never complete


def start(comm: MPI.Comm) -> None:
    """Watch for notices from the ranks of ``comm`` (runtime.init calls this)."""
    global _watch, _hooks_installed
    _watch = _Watch(comm)
    if not _hooks_installed:
        _hooks_installed = True
        atexit.register(_at_exit)
        sys.excepthook = _excepthook(sys.excepthook)


def stop() -> None:
    """A clean shutdown() on every rank: stop watching (no notices)."""
    global _watch
    if _watch is not None:
        _watch.close()
        _watch = None


def on_exit(hook: Callable[[], None]) -> None:
    """Run ``hook`` before MPI is finalized at exit (the torch engine stops its thread)."""
    if _watch is not None:
        _watch.exit_hooks.append(hook)


def gone(world_ranks: list[int] | None = None) -> str | None:
    """Why a rank among ``world_ranks`` (default: any) has left the job, else None."""
    if _watch is None or not _watch.gone:
        return None
    for q, why in sorted(_watch.gone.items()):
        if world_ranks is None or _watch.world_of[q] in world_ranks:
            return f"rank {q} has {why}"
    return None


def abandon(message: str, cause: str) -> PeerGoneError:
    """The error for a wait given up because ``cause`` (a rank left). The first time, the
    other ranks hear of it too (a rank waiting on this one then gives up as well), and at
    exit this rank skips MPI_Finalize."""
    global _abandoned
    if not _abandoned and _watch is not None:
        _watch.tell_everyone(EXITED, f"given up waiting ({cause})")
    _abandoned = True
    return PeerGoneError(message)


def abandoned() -> bool:
    """True once a wait was given up: collective clean-up (freeing communicators) must be skipped."""
    return _abandoned


def stall_limits() -> tuple[float, float]:
    """(warn after, end the job after) seconds of waiting; 0 means never."""
    return config.STALL_CHECK_TIME.get(), config.STALL_SHUTDOWN_TIME.get()


def end_job(message: str) -> None:
    """Print ``message`` and abort every rank (a stall past GTOPK_STALL_SHUTDOWN_TIME_SECONDS)."""
    print(message, file=sys.stderr, flush=True)
    time.sleep(0.2)  # the launcher forwards the line before the abort tears its I/O down
    MPI.COMM_WORLD.Abort(1)


def _excepthook(previous):
    def hook(kind, value, tb) -> None:
        previous(kind, value, tb)
        if _watch is None or not config.ABORT_ON_ERROR.get():
            return
        if sys.stderr is not sys.__stderr__ and sys.__stderr__ is not None:
            # a hook installed after ours captured stderr to print it when we return, which we do
            # not (torch.distributed's adds "[rankN]: "): the traceback would be lost
            sys.__stderr__.write("".join(traceback.format_exception(kind, value, tb)))
            sys.__stderr__.flush()
        line = traceback.format_exception_only(kind, value)[-1].strip()
        _watch.tell_everyone(FAILED, line)
        sys.stderr.flush()
        time.sleep(0.5)  # the others print their line before the abort reaches them
        MPI.COMM_WORLD.Abort(1)

    return hook


def _at_exit() -> None:
    """The interpreter is exiting: if gtopk_mpi is still initialized, stop the library's
    threads and tell the other ranks; skip MPI_Finalize if a wait was abandoned."""
    if _watch is not None:
        for hook in _watch.exit_hooks:
            hook()
        _watch.stop()
        _watch.tell_everyone(EXITED, "exited (its program ended without gtopk_mpi.shutdown())")
    if _abandoned:
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(0.5)  # ranks that gave up because of this one report it before the launcher ends them
        os._exit(1)

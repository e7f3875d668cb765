"""The timeline: a Chrome trace (chrome://tracing or Perfetto) of every op the torch front end
runs, written by rank 0 only. Each op gets a NEGOTIATE span (submission to agreement, thread 0)
and a RUN span (thread 1); times in microseconds since the trace started. GTOPK_TIMELINE names a
file to trace from init(); hvd.start_timeline / stop_timeline switch it at run time.
"""

from __future__ import annotations

import json
import threading
import time
from typing import TextIO

from .requests import OpType, Request


class Timeline:
    """Rank 0's trace file (other ranks hold a Timeline that never writes). Safe to start and
    stop from the caller's thread while the engine thread records."""

    def __init__(self, writer: bool, path: str | None = None):
        self._writer = writer
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        self._t0 = time.monotonic()
        if path:
            self.start(path)

    def start(self, path: str) -> None:
        """Start writing to ``path`` (closing a trace in progress); a no-op off rank 0."""
        self.stop()
        if self._writer:
            with self._lock:
                self._file = open(path, "w")
                self._file.write("[\n")
                self._t0 = time.monotonic()

    def stop(self) -> None:
        """Close the trace (a valid JSON array); a no-op when none is open."""
        with self._lock:
            self._close()

    def record(self, request: Request, submitted: float, started: float, ended: float) -> None:
        """One op's spans; times from time.monotonic(). SHUTDOWN closes the trace."""
        if self._file is None:  # no trace open (the common case): no lock on the engine thread
            return
        with self._lock:
            if self._file is None:
                return
            for phase, t0, t1, tid in (("NEGOTIATE", submitted, started, 0), ("RUN", started, ended, 1)):
                event = {"name": f"{phase} {request.name}", "cat": str(request.op_type), "ph": "X", "pid": 0,
                         "tid": tid, "ts": round((t0 - self._t0) * 1e6, 1), "dur": round((t1 - t0) * 1e6, 1),
                         "args": {"dtype": request.dtype, "shape": list(request.shape),
                                  "compression": request.compression}}
                self._file.write(json.dumps(event) + ",\n")
            if request.op_type == OpType.SHUTDOWN:
                self._close()
            else:
                self._file.flush()

    def _close(self) -> None:
        if self._file is not None:
            self._file.write("{}]\n")
            self._file.close()
            self._file = None

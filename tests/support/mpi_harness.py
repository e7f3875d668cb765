"""Runs a list of checks on every rank of an mpiexec launch and reports them on rank 0.

A suite script decorates its checks with ``@SUITE.check`` and ends with ``SUITE.run()``.
Each check runs on every rank; rank 0 prints ``ok``/``FAIL`` per check, the first failing
rank's traceback, a machine-readable ``CHECK {json}`` line per check (read by
mpi_launch.SuiteRuns, which makes every check a pytest test of its own) and ``SUITE: N
passed, M failed``. ``--only a,b`` runs just those checks. A failing rank also prints
its traceback at once to stderr, so a check that strands its peers (and ends in the
launcher's timeout) still shows why.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable

from mpi4py import MPI

import gtopk_mpi as g
from gtopk_mpi import config


class LinkComm:
    """The mpi4py communicator methods the suites use, over a gtopk_mpi Transport."""

    def __init__(self, link):
        self.link = link

    def Get_rank(self) -> int:  # noqa: N802 (mpi4py's names)
        return self.link.rank

    def Get_size(self) -> int:  # noqa: N802
        return self.link.size

    def allgather(self, obj):
        return self.link.allgather_obj(obj)

    def allreduce(self, value, op=MPI.SUM):
        assert op == MPI.SUM
        return sum(self.allgather(value))

    def Barrier(self) -> None:  # noqa: N802
        self.link.barrier()


def start_library():
    """gtopk_mpi.init() on MPI (under mpiexec), or with GTOPK_TEST_TRANSPORT=dist on
    torch.distributed (gloo, under torchrun); returns the suite's communicator."""
    if config.TEST_TRANSPORT.get() == "dist":
        import torch.distributed as dist

        from gtopk_mpi.torch.dist_transport import DistTransport

        dist.init_process_group("gloo")
        link = DistTransport()
        g.init(link)
        return LinkComm(link)
    g.init()
    return g.runtime.comm()


class Suite:
    def __init__(self, comm: MPI.Comm = MPI.COMM_WORLD):
        self.comm = comm
        self.checks: list[Callable[[], None]] = []

    def check(self, fn: Callable[[], None]) -> Callable[[], None]:
        self.checks.append(fn)
        return fn

    def identical_on_all_ranks(self, payload: bytes, what: str = "results") -> None:
        everyone = self.comm.allgather(payload)
        assert all(e == everyone[0] for e in everyone), f"{what} differ between ranks"

    def run(self, argv: list[str] | None = None) -> int:
        argv = sys.argv[1:] if argv is None else argv
        only = set(argv[argv.index("--only") + 1].split(",")) if "--only" in argv else None
        checks = [fn for fn in self.checks if only is None or fn.__name__ in only]
        rank, size = self.comm.Get_rank(), self.comm.Get_size()
        failures = 0
        for fn in checks:
            start = time.perf_counter()
            try:
                fn()
                ok, detail = True, ""
            except Exception:
                ok, detail = False, traceback.format_exc()
                print(f"rank {rank} FAIL {fn.__name__}:\n{detail}", file=sys.stderr, flush=True)
            results = self.comm.allgather((ok, detail))
            bad = [(q, d) for q, (o, d) in enumerate(results) if not o]
            if rank == 0:  # the seconds: where a launch's time goes (pytest sees only the launch's)
                seconds = time.perf_counter() - start
                print(f"{'ok  ' if not bad else 'FAIL'} P={size} {fn.__name__} ({seconds:.2f} s)", flush=True)
                for q, d in bad[:1]:
                    print(f"  rank {q}:\n{d}", flush=True)
                shown = "".join(f"rank {q}:\n{d}" for q, d in bad[:1])
                print("CHECK " + json.dumps({"name": fn.__name__, "ok": not bad, "detail": shown}), flush=True)
            failures += bool(bad)
        if rank == 0:
            print(f"SUITE: {len(checks) - failures} passed, {failures} failed", flush=True)
        return 1 if failures else 0

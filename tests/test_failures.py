"""Failures end the job or the call on every rank within seconds, never a hang (P = 2, 3):
an uncaught exception on one rank, a rank that exits early, a late rank (warnings naming it),
a stall past GTOPK_STALL_SHUTDOWN_TIME_SECONDS. The hang bound (10 s) is the issue's
contract, not a speed claim: every launch also has its own outer timeout."""

from __future__ import annotations

import time

import pytest

from mpi_launch import run

pytest.importorskip("torch")

FRONTS = ["numpy", "torch"]


def launch(nprocs: int, case: str, front: str, **env: str):
    t0 = time.monotonic()
    proc = run(nprocs, ["tests/programs/failure_cases.py", case, front], timeout=60, env=env)
    return proc, time.monotonic() - t0, proc.stdout + proc.stderr


@pytest.mark.parametrize("front", [*FRONTS, "ddp"])  # ddp: torch.distributed's excepthook wraps ours
@pytest.mark.parametrize("nprocs", [2, 3])
def test_uncaught_exception_ends_the_job(nprocs, front):
    proc, took, out = launch(nprocs, "exception", front)
    assert proc.returncode != 0, out
    assert took < 10 + 5, f"took {took:.1f} s (interpreter start included)\n{out}"   # startup of P ranks: <= 5 s
    assert out.count("RuntimeError: boom") >= 1 and out.count("Traceback") == 1, out
    assert f"rank {nprocs - 1} failed (RuntimeError: boom); ending the job" in out, out


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("nprocs", [2, 3])
def test_a_rank_that_exits_early_makes_the_others_raise(nprocs, front):
    proc, took, out = launch(nprocs, "early_exit", front)
    assert took < 10 + 5, f"took {took:.1f} s\n{out}"
    # rank 0 waits on the leaver itself (torch: every rank does); a rank waiting on rank 0
    # raises too, unless the launcher ends it first when rank 0 exits with status 1
    assert "rank 0: caught PeerGoneError: gtopk_mpi: rank 0:" in out, out
    assert f"rank {nprocs - 1} has exited (its program ended without gtopk_mpi.shutdown())" in out, out
    if front == "torch":
        assert all(f"rank {q}: caught PeerGoneError" in out for q in range(nprocs - 1)), out
    assert proc.returncode != 0, out  # the job failed: ranks that gave up a wait exit with 1


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("nprocs", [2, 3])
def test_a_late_rank_is_named_in_a_warning_and_the_call_completes(nprocs, front):
    proc, took, out = launch(nprocs, "late", front, GTOPK_STALL_CHECK_TIME_SECONDS="2")
    assert proc.returncode == 0, out
    late = nprocs - 1
    want = f"for ranks [{late}]" if front == "torch" else f"for rank {late if nprocs == 2 else 0}"
    if front == "numpy" and nprocs == 3:  # rank 2 folds into rank 0 first: rank 0 waits on it, rank 1 on rank 0
        want = "for rank 2"
    assert want in out and "has waited" in out, out
    total = sum(range(1, nprocs + 1))
    assert all(f"rank {q}: result {float(total)}" in out for q in range(nprocs)), out


def test_a_stall_past_the_shutdown_time_fails_the_op_on_every_rank():
    proc, took, out = launch(3, "stall", "torch", GTOPK_STALL_CHECK_TIME_SECONDS="1",
                             GTOPK_STALL_SHUTDOWN_TIME_SECONDS="3")
    assert proc.returncode == 0, out
    for q in range(2):
        assert f"rank {q}: caught HorovodInternalError: ALLREDUCE 'x' stalled for" in out, out
    assert "rank 2: caught HorovodInternalError: ALLREDUCE 'y' stalled for" in out, out
    assert "ranks [2] did not submit it" in out and "ranks [0, 1] did not submit it" in out, out


def test_a_stalled_collective_ends_the_job_past_the_shutdown_time():
    proc, took, out = launch(2, "stall", "numpy", GTOPK_STALL_SHUTDOWN_TIME_SECONDS="3")
    assert proc.returncode != 0 and took < 3 + 10, f"took {took:.1f} s\n{out}"
    assert "gtopk_mpi: rank 0: gtopk_allreduce call #1 stalled 3 s waiting for rank 1" in out, out

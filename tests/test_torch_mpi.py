"""gtopk_mpi.torch (Horovod's API and DistributedOptimizer) on P = 1..4 ranks, and on 2 hosts x 2
ranks emulated with GTOPK_RANKS_PER_HOST (the hierarchical gTop-k): every check of
tests/suites/torch_suite.py is a test of its own (``pytest -k``), one mpiexec launch per layout."""

from __future__ import annotations

import pytest

from mpi_launch import run, suite_checks

pytest.importorskip("torch")


@pytest.mark.parametrize("layout", [(1, 0), (2, 0), (3, 0), (4, 0), (4, 2)],
                         ids=lambda t: f"P{t[0]}" + (f"L{t[1]}" if t[1] else ""))
@pytest.mark.parametrize("check", suite_checks("tests/suites/torch_suite.py"))
def test_torch(check, layout, suite_runs, request):
    nprocs, per_host = layout
    suite_runs.outcome(request, "tests/suites/torch_suite.py", nprocs, check, timeout=300,
                       env={"GTOPK_RANKS_PER_HOST": str(per_host)} if per_host else None)


@pytest.mark.parametrize("nprocs", [2, 3], ids=lambda n: f"P{n}")
@pytest.mark.parametrize("check", suite_checks("tests/suites/horovod_suite.py"))
def test_horovod_parity(check, nprocs, suite_runs, request):
    """The rest of horovod.torch (tests/suites/horovod_suite.py): process sets, join, alltoall,
    reducescatter, grouped and sparse ops, autograd, optimizer corner cases."""
    suite_runs.outcome(request, "tests/suites/horovod_suite.py", nprocs, check, timeout=300)


def test_timeline_is_a_chrome_trace(tmp_path):
    import json

    path = tmp_path / "timeline.json"
    code = ("import torch, gtopk_mpi.torch as hvd\n"
            "hvd.init()\n"
            "hvd.allreduce(torch.ones(4), name='traced.op')\n"
            "hvd.allreduce(torch.ones(100), name='traced.sparse', compression=hvd.Compression.gtopk(0.1))\n"
            "hvd.shutdown()\n")
    proc = run(2, ["-c", code], timeout=120, env={"GTOPK_TIMELINE": str(path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = json.loads(path.read_text())
    names = {e.get("name") for e in events}
    assert {"NEGOTIATE traced.op", "RUN traced.op", "RUN traced.sparse"} <= names
    assert all(e["dur"] >= 0 for e in events if e)


def _checkpoint_run(*args: str) -> str:
    """tests/programs/checkpoint_run.py on 3 ranks; its output (it must succeed)."""
    proc = run(3, ["tests/programs/checkpoint_run.py", *args], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _digests(stdout: str) -> dict[str, str]:
    """Each run's DIGEST line: {run: sha256}."""
    return {w[1]: w[2] for w in (line.split() for line in stdout.splitlines()) if w[:1] == ["DIGEST"]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """12 steps in one launch (several buckets: GTOPK_FUSION_THRESHOLD=600), every rank's
    checkpoint saved after step 6: (the checkpoints' prefix, the digest of all 12 steps)."""
    prefix = str(tmp_path_factory.mktemp("checkpoint") / "ckpt")
    return prefix, _digests(_checkpoint_run("--stop", "12", "--save", prefix, "--save-at", "6"))["600"]


def test_checkpoint_restart_is_bit_identical_to_an_uninterrupted_run(checkpoint):
    """Residuals, velocities and the density schedule survive DistributedOptimizer.state_dict():
    12 steps in one launch == 6 steps, checkpoint, 6 steps in a fresh launch. Dropping the
    error-feedback state changes the result (the test can fail); another rank's state is refused."""
    prefix, whole = checkpoint
    resumed = _digests(_checkpoint_run("--start", "6", "--stop", "12", "--load", prefix, "--runs", "600,600:drop"))
    assert resumed["600"] == whole
    assert resumed["600:drop"] != whole
    proc = run(3, ["tests/programs/checkpoint_run.py", "--start", "6", "--stop", "7", "--load", prefix,
                   "--load-rank", "0"], timeout=120)
    assert proc.returncode != 0
    refused = "rank 1: ValueError: this checkpoint holds the error-feedback state (residuals) of rank 0 of 3"
    assert refused in proc.stdout


def test_checkpoint_loads_under_another_bucket_layout(checkpoint):
    """The checkpoint saved with several buckets (GTOPK_FUSION_THRESHOLD=600) loads with one
    (unlimited) and with four (50): every parameter's residual and velocity, laid out in the
    new buckets, equals what was saved entry for entry; training then goes on."""
    prefix, _ = checkpoint
    out = _checkpoint_run("--start", "6", "--stop", "8", "--load", prefix, "--runs", "inf,50,600", "--check-loaded")
    loaded = [line.split() for line in out.splitlines() if line.startswith("BUCKETS ")]
    assert len(loaded) == 3 and all(w[2] == "INTACT" for w in loaded), out
    assert len({w[1] for w in loaded}) == 3, loaded  # three layouts
    assert _digests(out).keys() == {"inf", "50", "600"}, out


@pytest.mark.parametrize("launch", [("torchrun", 2), ("torchrun", 3), ("mpiexec", 2)], ids=lambda t: f"{t[0]}-P{t[1]}")
@pytest.mark.parametrize("check", suite_checks("tests/suites/ddp_suite.py"))
def test_ddp_hook(check, launch, suite_runs, request):
    """The DDP communication hook (gtopk_mpi.torch.ddp): under torchrun its exchanges run on
    torch.distributed (gloo); under mpiexec through MPI (torch.distributed set up from MPI's
    environment)."""
    launcher, nprocs = launch
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29600 + nprocs)} if launcher == "mpiexec" else None
    suite_runs.outcome(request, "tests/suites/ddp_suite.py", nprocs, check, timeout=300, env=env, launcher=launcher)

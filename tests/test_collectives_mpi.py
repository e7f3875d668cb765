"""The collectives on P = 1..8 ranks (oversubscribed on small machines): every check of
tests/suites/mpi_suite.py is a test of its own (``pytest -k``), one mpiexec launch per P; the
hierarchical schedule on emulated hosts (tests/suites/hier_suite.py); both suites again on
torch.distributed (gloo) under torchrun, without MPI."""

from __future__ import annotations

import pytest

from mpi_launch import run, suite_checks


@pytest.mark.parametrize("nprocs", [1, 2, 3, 4, 5, 6, 8], ids=lambda n: f"P{n}")
@pytest.mark.parametrize("check", suite_checks("tests/suites/mpi_suite.py"))
def test_collectives(check, nprocs, suite_runs, request):
    suite_runs.outcome(request, "tests/suites/mpi_suite.py", nprocs, check, timeout=240)


def test_init_with_a_list_of_world_ranks():
    code = ("import numpy as np, gtopk_mpi as g\n"
            "from mpi4py import MPI\n"
            "w = MPI.COMM_WORLD.Get_rank()\n"
            "if w == 1:\n"
            "    try:\n"
            "        g.init([0, 2])\n"
            "    except ValueError as e:\n"
            "        print(f'rank 1 refused: {e}\\n', end='')  # one write: lines of ranks may not mix\n"
            "else:\n"
            "    g.init([0, 2]); g.init([0, 2])\n"
            "    assert g.size() == 2 and g.rank() == (0 if w == 0 else 1)\n"
            "    res = g.gtopk_allreduce(np.full(10, float(w + 1), np.float32), k=10)\n"
            "    assert np.all(res.values == 4.0), res.values\n"
            "    print(f'world rank {w} ok\\n', end='')\n"
            "    g.shutdown()\n")
    proc = run(3, ["-c", code], timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "world rank 0 ok" in proc.stdout and "world rank 2 ok" in proc.stdout
    assert "rank 1 refused: init(comm=[0, 2]): world rank 1 is not in the list" in proc.stdout


def test_steady_calls_fault_in_no_new_pages():
    """GTOPK_MALLOC_TUNE (runtime._keep_heap_pages): once warm, the buffers a call allocates
    and frees reuse mapped pages; with the knob at 0, glibc's own thresholds make a fresh
    process fault pages in on every call (the contrast shows what the check sees)."""
    code = ("import resource, numpy as np, gtopk_mpi as g\n"
            "from mpi4py import MPI\n"
            "g.init()\n"
            "m, k = 102_232, 25_558\n"
            "x = np.random.default_rng(g.rank()).standard_normal(m, dtype=np.float32)\n"
            "r = np.zeros(m, np.float32)\n"
            "def faults():\n"
            "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for i in range(40):\n"
            "    if i == 10: f0 = faults()\n"
            "    MPI.COMM_WORLD.Barrier()\n"
            "    g.gtopk_allreduce(x, k=k, residual=r, wire='bf16')\n"
            "print(f'FAULTS {(faults() - f0) / 30}\\n', end='')\n"
            "g.shutdown()\n")

    def per_call(tune: str) -> float:
        proc = run(2, ["-c", code], timeout=60, env={"GTOPK_MALLOC_TUNE": tune})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return max(float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("FAULTS"))

    untuned = per_call("0")
    if untuned < 5:
        pytest.skip(f"this malloc does not give pages back between calls ({untuned:.1f} faults per call untuned)")
    assert per_call("1") < 5, "pages faulted in on every call with GTOPK_MALLOC_TUNE=1"


@pytest.mark.parametrize("layout", [(4, 2), (5, 2), (6, 2), (6, 3), (8, 4)], ids=lambda t: f"P{t[0]}L{t[1]}")
@pytest.mark.parametrize("check", suite_checks("tests/suites/hier_suite.py"))
def test_hierarchical(check, layout, suite_runs, request):
    """Hosts emulated with GTOPK_RANKS_PER_HOST: 2x2, 3 hosts of 2, 2, 1, 3x2, 2x3, 2x4."""
    nprocs, per_host = layout
    suite_runs.outcome(request, "tests/suites/hier_suite.py", nprocs, check, timeout=240,
                       env={"GTOPK_RANKS_PER_HOST": str(per_host)})


@pytest.mark.parametrize("nprocs", [2, 3], ids=lambda n: f"P{n}")
@pytest.mark.parametrize("check", suite_checks("tests/suites/mpi_suite.py"))
def test_on_torch_distributed(check, nprocs, suite_runs, request):
    """mpi_suite's checks with the collectives on gtopk_mpi.torch.dist_transport (gloo), under torchrun."""
    pytest.importorskip("torch")
    suite_runs.outcome(request, "tests/suites/mpi_suite.py", nprocs, check, timeout=240,
                       env={"GTOPK_TEST_TRANSPORT": "dist"}, launcher="torchrun")


@pytest.mark.parametrize("check", suite_checks("tests/suites/hier_suite.py"))
def test_hierarchical_on_torch_distributed(check, suite_runs, request):
    """hier_suite's checks on torch.distributed at 2 hosts x 2 ranks (host groups from dist.new_group)."""
    pytest.importorskip("torch")
    suite_runs.outcome(request, "tests/suites/hier_suite.py", 4, check, timeout=240,
                       env={"GTOPK_TEST_TRANSPORT": "dist", "GTOPK_RANKS_PER_HOST": "2"}, launcher="torchrun")

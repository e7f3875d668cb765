"""gtopk_mpi.torch (Horovod's API and DistributedOptimizer) on P = 1..4 ranks, one launch per P."""

from __future__ import annotations

import pytest

from mpi_launch import run

pytest.importorskip("torch")


@pytest.mark.parametrize("nprocs", [1, 2, 3, 4])
def test_torch_suite(nprocs):
    proc = run(nprocs, ["tests/torch_suite.py"], timeout=300)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert "SUITE: " in proc.stdout and " 0 failed" in proc.stdout, report

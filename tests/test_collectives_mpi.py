"""The collectives on P = 1..8 ranks (oversubscribed on small machines), one launch per P."""

from __future__ import annotations

import pytest

from mpi_launch import run


@pytest.mark.parametrize("nprocs", [1, 2, 3, 4, 5, 6, 8])
def test_collectives_suite(nprocs):
    proc = run(nprocs, ["tests/mpi_suite.py"], timeout=240)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert "SUITE: " in proc.stdout and " 0 failed" in proc.stdout, report

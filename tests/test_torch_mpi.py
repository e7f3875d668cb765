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

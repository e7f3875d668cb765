"""Run by tests/test_failures.py under mpiexec: one way a job goes wrong, on the last rank.

    failure_cases.py CASE FRONT      CASE: exception, early_exit, late, stall; FRONT: numpy, torch, ddp

Every other rank calls one collective and prints what it got; the last rank misbehaves:
``exception`` raises outside any call, ``early_exit`` returns without shutdown(),
``late`` joins the call 4 s late (run with GTOPK_STALL_CHECK_TIME_SECONDS=2),
``stall`` (run with GTOPK_STALL_SHUTDOWN_TIME_SECONDS=3) submits a differently named op
(torch) or does not call at all for 30 s (numpy). ``ddp``: numpy's collectives after
torch.distributed is started from MPI's environment (its excepthook then wraps ours).
"""

from __future__ import annotations

import sys
import time

import numpy as np

import gtopk_mpi as g

case, front = sys.argv[1], sys.argv[2]
if front == "torch":
    import torch

    import gtopk_mpi.torch as hvd

    hvd.init()
elif front == "ddp":
    import os

    from gtopk_mpi.torch import ddp

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29641")
    g.init()
    ddp.init_process_group_from_mpi("gloo")
else:
    g.init()
rank, size = g.rank(), g.size()
last = rank == size - 1
x = np.full(1000, float(rank + 1), np.float32)


def collective(name: str = "x"):
    if front == "torch":
        return hvd.allreduce(torch.from_numpy(x), name=name, op=hvd.Sum)
    return g.gtopk_allreduce(x, k=10).values


if last and case == "exception":
    raise RuntimeError("boom")
if last and case == "early_exit":
    sys.exit(0)
if last and case == "late":
    time.sleep(4)
if last and case == "stall" and front == "numpy":
    time.sleep(30)
try:
    out = collective("y" if last and case == "stall" else "x")
    print(f"rank {rank}: result {float(out[0])}", flush=True)
except Exception as e:  # noqa: BLE001 - reported for the test to read
    print(f"rank {rank}: caught {type(e).__name__}: {e}", flush=True)
if front == "torch":
    hvd.shutdown()
else:
    g.shutdown()

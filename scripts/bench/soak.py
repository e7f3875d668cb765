"""Soak check: memory stays flat over long runs and nothing leaks at shutdown.

    mpiexec -n 2 .venv/bin/python scripts/bench/soak.py [--calls 10000] [--steps 1000] [--numel 2000000]

1. ``--calls`` gtopk_allreduce calls (residual, density 0.001) on a ``--numel`` float32
   vector of small integers (so every sum is exact): prints this rank's RSS after 1% of
   the calls and at the end, and checks the conservation law over the whole run, exactly:
   sum over ranks of (final residual + every result) == sum of every input.
2. ``--steps`` DistributedOptimizer steps with gTop-k on a small MLP: RSS growth likewise.
3. After shutdown: no gtopk_mpi thread left.
Exit status 1 if any RSS growth reaches 20 MB or a check fails. Not part of the default
test run (a minute or two on two ranks); tests/test_scripts.py runs it shortened.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=1_000)
    ap.add_argument("--numel", type=int, default=2_000_000)
    ap.add_argument("--limit-mb", type=float, default=20.0)
    args = ap.parse_args()

    import torch

    import gtopk_mpi as g
    import gtopk_mpi.torch as hvd

    torch.set_num_threads(1)
    hvd.init()
    comm = g.runtime.comm()
    rank, m = g.rank(), args.numel
    rng = np.random.default_rng(rank)
    residual = np.zeros(m, np.float32)
    fed = np.zeros(m, np.float64)
    applied = np.zeros(m, np.float64)
    warm = max(1, args.calls // 100)
    ok = True
    for i in range(args.calls):
        if i == warm:
            before = rss_mb()
        x = rng.integers(-50, 51, m).astype(np.float32)
        fed += x
        res = g.gtopk_allreduce(x, density=0.001, residual=residual)
        np.add.at(applied, res.indices, res.values)
    after = rss_mb()
    total_fed = np.empty_like(fed)
    comm.Allreduce(fed, total_fed)
    left = residual.astype(np.float64)
    total_left = np.empty_like(left)
    comm.Allreduce(left, total_left)
    conserved = bool(np.array_equal(total_left + applied, total_fed))
    ok &= conserved and after - before < args.limit_mb
    if rank == 0:
        print(f"gtopk_allreduce x {args.calls} (m = {m:,}): RSS {before:.1f} -> {after:.1f} MB "
              f"(+{after - before:.1f} MB, limit {args.limit_mb:.0f}); conservation exact: {conserved}", flush=True)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.01),
                                   named_parameters=model.named_parameters(), compression=hvd.Compression.gtopk(0.01))
    warm = max(1, args.steps // 100)
    for step in range(args.steps):
        if step == warm:
            before = rss_mb()
        opt.zero_grad()
        x = torch.randn(32, 64)
        torch.nn.functional.cross_entropy(model(x), torch.randint(0, 10, (32,))).backward()
        opt.step()
    after = rss_mb()
    ok &= after - before < args.limit_mb
    if rank == 0:
        print(f"DistributedOptimizer x {args.steps} steps: RSS {before:.1f} -> {after:.1f} MB "
              f"(+{after - before:.1f} MB)", flush=True)

    hvd.shutdown()
    left = [t.name for t in threading.enumerate() if t.name.startswith("gtopk_mpi")]
    ok &= not left
    print(f"rank {rank}: threads left after shutdown: {left or 'none'}; {'OK' if ok else 'FAILED'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

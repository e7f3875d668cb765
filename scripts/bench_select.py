"""Selection and merge speed against baselines measured in the same run.

    .venv/bin/python scripts/bench_select.py [--numel N] [--density RHO] [--repeats R]

Default: ResNet-50's gradient (25,557,032 float32, standard normal), rho = 0.001.
Prints medians over repeats and the ratios the project targets:
  select_topk (1 thread) vs np.argpartition(|x|), torch.topk(|x|, k) and one np.abs(x, out=buf) pass;
  the fused error-feedback selection vs plain selection; the 2-thread (OpenMP) figure;
  merge_topk of two k-sets.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from gtopk_mpi import merge_topk, select_topk, select_topk_ef


def timed(fn, repeats: int) -> float:
    """Median wall time of fn() in ms."""
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--numel", type=int, default=25_557_032)
    ap.add_argument("--density", type=float, default=0.001)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    m, r = args.numel, args.repeats
    k = max(1, int(np.ceil(args.density * m)))
    rng = np.random.default_rng(0)
    x = rng.standard_normal(m, dtype=np.float32)
    residual = rng.standard_normal(m, dtype=np.float32) * 0.1

    rows: dict[str, float] = {}
    out = np.empty_like(x)
    np.abs(x, out=out)  # fault the output pages in first: the floor is the pass, not the allocation
    rows["np.abs(x) (one pass, memory floor)"] = timed(lambda: np.abs(x, out=out), r)
    rows["select_topk, 1 thread"] = timed(lambda: select_topk(x, k, threads=1), r)
    rows["select_topk, 2 threads"] = timed(lambda: select_topk(x, k, threads=2), r)
    rows["select_topk_ef (fused residual), 1 thread"] = timed(lambda: select_topk_ef(residual, x, k, threads=1), r)
    rows["np.argpartition(|x|, m-k)"] = timed(lambda: np.argpartition(np.abs(x), m - k), max(3, r // 2))
    try:
        import torch

        torch.set_num_threads(1)
        xt = torch.from_numpy(x)
        rows["torch.topk(|x|, k), 1 thread"] = timed(lambda: torch.topk(xt.abs(), k), max(3, r // 2))
    except ImportError:
        pass
    a = select_topk(x, k)
    b = select_topk(rng.standard_normal(m, dtype=np.float32), k)
    rows["merge_topk of two k-sets"] = timed(lambda: merge_topk(*a, *b, k), 50)

    print(f"m = {m:,} float32, k = {k:,} (density {args.density}), median of {r} runs")
    for name, ms in rows.items():
        print(f"  {name:<44} {ms:9.3f} ms")
    sel = rows["select_topk, 1 thread"]
    print("ratios (same run):")
    print(f"  argpartition / select_topk          {rows['np.argpartition(|x|, m-k)'] / sel:7.1f}x   (target >= 5x)")
    if "torch.topk(|x|, k), 1 thread" in rows:
        print(f"  torch.topk / select_topk            {rows['torch.topk(|x|, k), 1 thread'] / sel:7.1f}x   "
              "(target >= 20x)")
    print(f"  select_topk / np.abs pass           {sel / rows['np.abs(x) (one pass, memory floor)']:7.2f}x   "
          "(target <= 2.5x)")
    print(f"  fused EF / plain select             {rows['select_topk_ef (fused residual), 1 thread'] / sel:7.2f}x")
    print(f"  1 thread / 2 threads                {sel / rows['select_topk, 2 threads']:7.2f}x")
    print(f"  merge_topk                          {rows['merge_topk of two k-sets']:7.3f} ms (target <= 1 ms)")


if __name__ == "__main__":
    main()

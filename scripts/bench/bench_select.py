"""Selection and merge speed against baselines measured in the same run.

    .venv/bin/python scripts/bench/bench_select.py [--numel N] [--density RHO] [--repeats R]

Default: ResNet-50's gradient (25,557,032 float32, standard normal), rho = 0.001.
Prints medians over repeats and the ratios the project targets:
  select_topk (1 thread) vs np.argpartition(|x|), torch.topk(|x|, k) and one np.abs(x, out=buf) pass;
  the device path made of torch operations (gtopk_mpi/cuda/torch_kernels.py) run on a CPU tensor;
  the fused error-feedback selection vs plain selection; the 2-thread (OpenMP) figure;
  the butterfly round's local work on two k-sets: the merge with survivor tags (and its AVX2 and
  scalar forms, what CPUs without AVX-512 run) vs np.partition of their 2k magnitudes, and encoding +
  decoding one message (bf16 values, packed indices) vs the time that message takes on 1 Gbit/s
  Ethernet (119 MB/s).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from gtopk_mpi import _C, merge_topk, select_topk, select_topk_ef

TORCH_OPS = "torch-ops device path's select, 1 thread"  # on a CPU tensor


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
        from gtopk_mpi.cuda.torch_kernels import TorchKernels  # a GPU install without a toolkit

        out_idx, out_val = torch.empty(k, dtype=torch.int32), torch.empty(k)
        rows[TORCH_OPS] = timed(
            lambda: TorchKernels(cpu_stands_in=True).select(xt, None, k, out_idx, out_val), max(3, r // 2))
    except ImportError:
        pass
    a = select_topk(x, k)
    b = select_topk(rng.standard_normal(m, dtype=np.float32), k)
    rows["merge_topk of two k-sets"] = timed(lambda: merge_topk(*a, *b, k), 50)
    tags = np.ones(k, np.uint32)
    rows["merge with survivor tags (a round's merge)"] = timed(lambda: _C.merge_topk(*a, *b, k, tags, None), 50)
    form = _C.merge_form()  # the form as run; then the ones CPUs without AVX-512 run
    _C.merge_form("avx2")
    if _C.merge_form() == "avx2":
        rows["  the same, AVX2 form"] = timed(lambda: _C.merge_topk(*a, *b, k, tags, None), 50)
    _C.merge_form("scalar")
    rows["  the same, scalar form"] = timed(lambda: _C.merge_topk(*a, *b, k, tags, None), 50)
    _C.merge_form(form)
    mags = np.abs(np.concatenate([a[1], b[1]]))
    rows["np.partition of the 2k magnitudes"] = timed(lambda: np.partition(mags, len(mags) - k), 50)
    payload, index_bytes, scale, packed, _, _ = _C.encode_entries(*a, 1, -1, True)
    rows["encode one message (bf16, packed)"] = timed(lambda: _C.encode_entries(*a, 1, -1, True), 50)
    rows["decode one message"] = timed(lambda: _C.decode_entries(payload, k, packed, index_bytes, False, 1, scale,
                                                                  np.dtype(np.float32), m), 50)

    print(f"m = {m:,} float32, k = {k:,} (density {args.density}), median of {r} runs")
    for name, ms in rows.items():
        print(f"  {name:<44} {ms:9.3f} ms")
    sel = rows["select_topk, 1 thread"]
    print("ratios (same run):")
    print(f"  argpartition / select_topk          {rows['np.argpartition(|x|, m-k)'] / sel:7.1f}x   (target >= 5x)")
    if "torch.topk(|x|, k), 1 thread" in rows:
        print(f"  torch.topk / select_topk            {rows['torch.topk(|x|, k), 1 thread'] / sel:7.1f}x   "
              "(target >= 20x)")
    if TORCH_OPS in rows:
        print(f"  torch-ops path / select_topk        "
              f"{rows[TORCH_OPS] / sel:7.1f}x   "
              "(its cost on CPU; on a GPU: scripts/gpu/bench_gpu.py)")
    print(f"  select_topk / np.abs pass           {sel / rows['np.abs(x) (one pass, memory floor)']:7.2f}x   "
          "(target <= 2.5x)")
    print(f"  fused EF / plain select             {rows['select_topk_ef (fused residual), 1 thread'] / sel:7.2f}x")
    print(f"  1 thread / 2 threads                {sel / rows['select_topk, 2 threads']:7.2f}x")
    merge = rows["merge with survivor tags (a round's merge)"]
    print(f"  merge with tags / np.partition      {merge / rows['np.partition of the 2k magnitudes']:7.2f}x   "
          f"(target <= 2x; {merge:.3f} ms, target <= 0.2 ms; {form} form)")
    for other in ("AVX2", "scalar"):
        if f"  the same, {other} form" in rows:
            label = f"{other} form / merge as run"
            print(f"  {label:<35}{rows[f'  the same, {other} form'] / merge:7.2f}x")
    codec = rows["encode one message (bf16, packed)"] + rows["decode one message"]
    wire_ms = (payload.nbytes + 56) / 119e6 * 1e3
    print(f"  encode + decode / 1 GbE time        {codec / wire_ms:7.2f}x   ({codec:.3f} ms for "
          f"{payload.nbytes / k:.2f} B/entry, {wire_ms:.3f} ms on the wire; target <= 0.25 ms)")


if __name__ == "__main__":
    main()

"""Benchmark of the collectives: ``mpiexec -n P python -m gtopk_mpi.bench [options]``.

Runs each algorithm on a gradient of the chosen size (random normal, a fresh
one per rank), barrier-aligned, and reports per algorithm the median/min/max
time per call as the maximum over ranks, split into selection, communication and
merge, with the bytes and messages each rank sent. Rank 0 prints a table (and a
progress bar while it runs); ``--csv``/``--json`` write the rows.

Algorithms:
  dense        MPI_Allreduce of the whole gradient (the paper's DenseAllReduce)
  topk         local top-k + Allgather of (index, value) pairs (TopKAllReduce)
  gtopk        butterfly gTop-k, merged values (ours)
  gtopk-exact  butterfly gTop-k + one Allreduce of the k exact values
Sparse algorithms run with error feedback (a residual per rank), as in training.
On a machine with fewer cores than ranks the figures are CPU-bound, not network-bound.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
from mpi4py import MPI

from . import collectives, runtime
from .selection import resolve_k

#: parameter counts of the paper's models (float32 gradients)
MODELS = {
    "resnet20": 272_474,      # CIFAR-10 (gtopk_mpi.models.ResNetCifar(20))
    "vgg16": 14_728_266,      # CIFAR-10
    "resnet50": 25_557_032,   # ImageNet
    "alexnet": 61_100_840,    # ImageNet
    "lstm-ptb": 66_034_000,   # 2 x LSTM(1500), vocabulary 10,000
}
ALGORITHMS = ("dense", "topk", "gtopk", "gtopk-exact")


@dataclass
class Row:
    """One algorithm's figures; times in ms (max over ranks), bytes per rank (max)."""

    algorithm: str
    ranks: int
    numel: int
    k: int
    dtype: str
    median_ms: float
    min_ms: float
    max_ms: float
    select_ms: float
    comm_ms: float
    merge_ms: float
    bytes_sent: int
    bytes_received: int
    messages: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gtopk_mpi.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--numel", type=int, help="gradient length (elements)")
    size.add_argument("--model", choices=sorted(MODELS), default="resnet50",
                      help="use this model's parameter count (default: resnet50)")
    p.add_argument("--density", type=float, default=0.001, help="rho: k = ceil(rho * numel) (default 0.001)")
    p.add_argument("--dtype", choices=("float32", "float16", "float64"), default="float32")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS),
                   help=f"comma-separated subset of {','.join(ALGORITHMS)}")
    p.add_argument("--iters", type=int, default=10, help="timed calls per algorithm (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", help="write the rows to this CSV file (rank 0)")
    p.add_argument("--json", help="write the rows to this JSON file (rank 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    args.algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    for a in args.algorithms:
        if a not in ALGORITHMS:
            p.error(f"unknown algorithm {a!r}; choose from {', '.join(ALGORITHMS)}")
    return args


def run_once(algorithm: str, x: np.ndarray, k: int, residual: np.ndarray) -> collectives.CommStats:
    if algorithm == "dense":
        t0 = time.perf_counter()
        collectives.dense_allreduce(x)
        dt = time.perf_counter() - t0
        n = x.nbytes
        p = runtime.size()
        # ring allreduce volume: 2 (P-1)/P of the vector each way
        vol = 2 * (p - 1) * n // p
        return collectives.CommStats(bytes_sent=vol, bytes_received=vol, messages_sent=2 * (p - 1),
                                     comm_s=dt, total_s=dt)
    if algorithm == "topk":
        return collectives.topk_allreduce(x, k=k, residual=residual).stats
    values = "exact" if algorithm == "gtopk-exact" else "merged"
    return collectives.gtopk_allreduce(x, k=k, residual=residual, values=values).stats


def bench_algorithm(algorithm: str, x: np.ndarray, k: int, args: argparse.Namespace, progress) -> Row:
    comm = runtime.comm()
    residual = np.zeros_like(x)
    samples: list[collectives.CommStats] = []
    for i in range(args.warmup + args.iters):
        comm.Barrier()
        s = run_once(algorithm, x, k, residual)
        if i >= args.warmup:
            samples.append(s)
        if progress is not None:
            progress.update(1)
    # per-iteration maximum over ranks
    local = np.array([[s.total_s, s.select_s, s.comm_s, s.merge_s] for s in samples])
    worst = np.empty_like(local)
    comm.Allreduce(local, worst, op=MPI.MAX)
    counts = np.array([max(s.bytes_sent for s in samples), max(s.bytes_received for s in samples),
                       max(s.messages_sent for s in samples)], np.int64)
    counts_max = np.empty_like(counts)
    comm.Allreduce(counts, counts_max, op=MPI.MAX)
    tot = worst[:, 0] * 1e3
    med = lambda col: float(statistics.median(worst[:, col] * 1e3))  # noqa: E731
    return Row(algorithm, comm.Get_size(), len(x), k, str(x.dtype), float(statistics.median(tot)),
               float(tot.min()), float(tot.max()), med(1), med(2), med(3),
               int(counts_max[0]), int(counts_max[1]), int(counts_max[2]))


def format_table(rows: list[Row]) -> str:
    dense = next((r for r in rows if r.algorithm == "dense"), None)
    head = (f"{'algorithm':<12} {'median ms':>10} {'min':>8} {'max':>8} {'select':>8} {'comm':>8} {'merge':>8} "
            f"{'sent KB':>10} {'recv KB':>10} {'msgs':>5} {'vs dense':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{dense.median_ms / r.median_ms:8.1f}x" if dense and r.median_ms > 0 else f"{'':>9}"
        lines.append(f"{r.algorithm:<12} {r.median_ms:10.2f} {r.min_ms:8.2f} {r.max_ms:8.2f} {r.select_ms:8.2f} "
                     f"{r.comm_ms:8.2f} {r.merge_ms:8.2f} {r.bytes_sent / 1e3:10.1f} "
                     f"{r.bytes_received / 1e3:10.1f} {r.messages:5d} {ratio}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime.init()
    comm = runtime.comm()
    me, p = comm.Get_rank(), comm.Get_size()
    numel = args.numel if args.numel is not None else MODELS[args.model]
    k = resolve_k(numel, None, args.density)
    x = np.random.default_rng([args.seed, me]).standard_normal(numel, dtype=np.float32).astype(args.dtype)
    progress = None
    if me == 0:
        label = args.model if args.numel is None else "numel"
        mpi = MPI.Get_library_version().splitlines()[0].strip()
        print(f"gtopk_mpi.bench: P={p} numel={numel:,} ({label}) k={k:,} (density {args.density}) "
              f"dtype={args.dtype} iters={args.iters} warmup={args.warmup}; {mpi}", flush=True)
        if not args.no_progress:
            from tqdm import tqdm
            progress = tqdm(total=len(args.algorithms) * (args.iters + args.warmup), desc="bench", file=sys.stderr,
                            leave=False)
    rows = [bench_algorithm(a, x, k, args, progress) for a in args.algorithms]
    if me == 0:
        if progress is not None:
            progress.close()
        print(format_table(rows))
        print("times: max over ranks per call, median over calls; sent/recv: payload bytes per rank per call")
        if args.csv:
            with open(args.csv, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
                w.writeheader()
                w.writerows(asdict(r) for r in rows)
        if args.json:
            with open(args.json, "w") as f:
                json.dump([asdict(r) for r in rows], f, indent=2)
    runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the collectives: ``mpiexec -n P python -m gtopk_mpi.bench [options]``.

Runs each algorithm on a gradient of the chosen size (random normal, a fresh
one per rank), barrier-aligned, the algorithms' calls interleaved (each iteration calls
every variant once, so a noisy machine's drift hits all alike), and reports per algorithm the median/min/max
time per call as the maximum over ranks, split into selection, communication and
merge, with the bytes and messages each rank sent. Rank 0 prints a table (and a
progress bar while it runs); ``--csv``/``--json`` write the rows.

Algorithms:
  dense        MPI_Allreduce of the whole gradient (the paper's DenseAllReduce)
  topk         local top-k + Allgather of (index, value) pairs (TopKAllReduce)
  gtopk        butterfly gTop-k, merged values (ours)
  gtopk-exact  butterfly gTop-k + one Allreduce of the k exact values
  gtopk-tree   the paper's drawing: reduction tree to rank 0 + broadcast, same merge
Sparse algorithms run with error feedback (a residual per rank), as in training,
except gtopk-tree (a reference point: plain selection, no residual). --wire fp32,bf16
runs topk and gtopk(-exact) once per wire format (values in 32 or 16 bits; indices travel
packed when smaller either way); B/entry is bytes on the wire per (index, value) pair
sent, headers included; "rest" is the call minus its local selection (what a GPU user
pays: merges, codec, bookkeeping, Python and the wire).
On a machine with fewer cores than ranks the figures are CPU-bound, not network-bound.

Hosts (topology.py): --hierarchical flat,hier runs gtopk(-exact) once per schedule
(default: the layout's; topk's allgather goes through the hosts whenever the layout's
default is hier). "port KB" is the payload this call sent to other hosts, summed over
each host's ranks (the largest host); --nic FILE (a byte counter such as
/sys/class/net/eth0/statistics/tx_bytes, read by each host's first rank around the timed
calls) adds "NIC KB": what actually left the host's port per call, protocol headers and
all (every algorithm, dense included).

Cost model (see gtopk_mpi.costmodel): --model-fit measures alpha and beta with a
ping-pong between ranks 0 and 1 (between hosts when there are several), prints the model
next to every measured time, and --predict 16,32,...,1024 extrapolates (selection and merge
times as measured here); --predict-hosts 8,16,...,128 --per-host 4,8 predicts dense and
gTop-k flat vs hierarchical on H hosts x G ranks (the link inside a host fitted by a
ping-pong between two ranks of host 0). --plot out.png draws the prediction against P with the measured
points; --plot-from a.csv b.csv ... --plot out.png draws measured times of several runs
against P (no MPI needed).
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

from . import costmodel, runtime
from .arguments import resolve_k
from .baselines import dense_allreduce, gtopk_tree_allreduce, topk_allreduce
from .butterfly import gtopk_allreduce
from .results import CommStats

#: parameter counts of the paper's models (float32 gradients)
MODELS = {
    "resnet20": 272_474,      # CIFAR-10 (scripts/experiments/models.py: ResNetCifar(20))
    "vgg16": 14_728_266,      # CIFAR-10
    "resnet50": 25_557_032,   # ImageNet
    "alexnet": 61_100_840,    # ImageNet
    "lstm-ptb": 66_034_000,   # 2 x LSTM(1500), vocabulary 10,000
}
ALGORITHMS = ("dense", "topk", "gtopk", "gtopk-exact", "gtopk-tree")


@dataclass
class Row:
    """One algorithm's figures; times in ms (max over ranks), bytes per rank (max)."""

    algorithm: str
    wire: str
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
    bytes_per_entry: float           # bytes sent per (index, value) pair, headers included
    rest_ms: float                   # the call minus its local selection (median)
    schedule: str = "flat"           # gtopk's schedule: flat or hier (topology.py)
    port_kb: float = float("nan")    # payload sent to other hosts per call, summed over a host's ranks (max)
    nic_kb: float = float("nan")     # --nic: bytes out of the host's port per call, measured (max over hosts)
    skew_ms: float = 0.0             # --align: waiting for slower ranks (not in median_ms)
    model_ms: float = float("nan")   # alpha-beta prediction (with --model-fit)
    wire_ms: float = float("nan")    # --model-fit, flat gtopk: log2(P) alpha + bytes sent x beta


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
    p.add_argument("--wire", default="fp32", help="comma-separated wire formats of the sparse algorithms: fp32, "
                   "bf16, fp16, raw (the 8-byte int32 + float32 pairs, indices unpacked; default fp32)")
    p.add_argument("--hierarchical", default="auto", help="comma-separated gTop-k schedules: flat, hier, auto "
                   "(the layout's default; GTOPK_HIERARCHICAL)")
    p.add_argument("--nic", help="a byte counter file of the host's port (e.g. "
                   "/sys/class/net/eth0/statistics/tx_bytes): report the bytes each host sent per call")
    p.add_argument("--iters", type=int, default=10, help="timed calls per algorithm (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", help="write the rows to this CSV file (rank 0)")
    p.add_argument("--json", help="write the rows to this JSON file (rank 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--align", action="store_true",
                   help="barrier between selection and communication in sparse algorithms, so 'comm' is the "
                   "network alone (the wait for slower ranks is reported as 'skew' and left out of 'median')")
    p.add_argument("--model-fit", action="store_true",
                   help="fit alpha/beta by ping-pong (ranks 0-1) and print the cost model beside the times")
    p.add_argument("--predict", default="", help="comma-separated P to predict with the fitted model, "
                   "e.g. 16,32,64,128,256,512,1024 (implies --model-fit)")
    p.add_argument("--predict-hosts", default="", help="comma-separated host counts H to predict gTop-k flat vs "
                   "hierarchical and dense on H hosts of --per-host ranks (needs a host of 2+ ranks here: its "
                   "ping-pong fits the shared-memory link; implies --model-fit), e.g. 8,16,32,64,128")
    p.add_argument("--per-host", default="4,8", help="ranks per host for --predict-hosts (default 4,8)")
    p.add_argument("--plot", help="write a PNG: prediction vs P with measured points (or with --plot-from)")
    p.add_argument("--plot-from", nargs="+", metavar="CSV",
                   help="plot measured median time vs P from CSVs of earlier runs, then exit")
    p.add_argument("--plot-field", default="median_ms", choices=("median_ms", "comm_ms", "select_ms", "merge_ms"),
                   help="which time --plot-from draws (default: median_ms, the whole call)")
    args = p.parse_args(argv)
    args.predict = [int(v) for v in args.predict.split(",") if v.strip()]
    args.predict_hosts = [int(v) for v in args.predict_hosts.split(",") if v.strip()]
    args.per_host = [int(v) for v in args.per_host.split(",") if v.strip()]
    if args.predict or args.predict_hosts:
        args.model_fit = True
    args.algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    for a in args.algorithms:
        if a not in ALGORITHMS:
            p.error(f"unknown algorithm {a!r}; choose from {', '.join(ALGORITHMS)}")
    args.hierarchical = [h.strip() for h in args.hierarchical.split(",") if h.strip()]
    for h in args.hierarchical:
        if h not in ("flat", "hier", "auto"):
            p.error(f"unknown schedule {h!r}; choose from flat, hier, auto")
    args.wire = [w.strip() for w in args.wire.split(",") if w.strip()]
    for w in args.wire:
        if w not in ("fp32", "bf16", "fp16", "raw"):
            p.error(f"unknown wire format {w!r}; choose from fp32, bf16, fp16, raw")
    return args


def run_once(algorithm: str, x: np.ndarray, k: int, residual: np.ndarray, align: bool = False,
             wire: str = "fp32", hierarchical: bool | None = None) -> CommStats:
    if algorithm == "dense":
        t0 = time.perf_counter()
        dense_allreduce(x)
        dt = time.perf_counter() - t0
        n = x.nbytes
        p = runtime.size()
        # ring allreduce volume: 2 (P-1)/P of the vector each way
        vol = 2 * (p - 1) * n // p
        return CommStats(bytes_sent=vol, bytes_received=vol, messages_sent=2 * (p - 1),
                                     comm_s=dt, total_s=dt)
    if algorithm == "topk":
        stats = topk_allreduce(x, k=k, residual=residual, align=align, wire=wire).stats
    elif algorithm == "gtopk-tree":
        stats = gtopk_tree_allreduce(x, k=k, align=align).stats
    else:
        values = "exact" if algorithm == "gtopk-exact" else "merged"
        stats = gtopk_allreduce(x, k=k, residual=residual, values=values, align=align, wire=wire,
                                hierarchical=hierarchical).stats
    stats.total_s -= stats.skew_s
    return stats


def variants(algorithm: str, args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (wire, schedule) pairs an algorithm runs with."""
    wires = args.wire if algorithm in ("topk", "gtopk", "gtopk-exact") else ["fp32"]
    schedules = args.hierarchical if algorithm in ("gtopk", "gtopk-exact") else ["flat"]
    return [(w, h) for w in wires for h in schedules]


def read_counter(path: str | None) -> int:
    """The byte counter at ``path`` on each host's first rank (0 elsewhere, or without one)."""
    if path is None or runtime.local_rank() != 0:
        return 0
    with open(path) as f:
        return int(f.read().strip())


def per_host(comm: MPI.Comm, value: float) -> float:
    """The largest over hosts of ``value`` summed over each host's ranks."""
    layout = runtime.layout()
    sums = [0.0] * layout.hosts
    for q, v in enumerate(comm.allgather(value)):
        sums[layout.host_of[q]] += v
    return max(sums)


def bench_variants(variants: list[tuple[str, str, str]], x: np.ndarray, k: int, args: argparse.Namespace,
                   progress) -> list[Row]:
    """Rows of every (algorithm, wire, schedule), their calls interleaved: iteration i runs each
    variant once in turn, so drift of a shared machine hits all of them alike."""
    comm = runtime.comm()
    residuals = [np.zeros_like(x) for _ in variants]
    samples: list[list[CommStats]] = [[] for _ in variants]
    nic = [0.0] * len(variants)
    for i in range(args.warmup + args.iters):
        for v, (algorithm, wire, schedule) in enumerate(variants):
            hierarchical = {"flat": False, "hier": True}.get(schedule, runtime.layout().hierarchical)
            comm.Barrier()
            before = read_counter(args.nic)
            s = run_once(algorithm, x, k, residuals[v], args.align, wire, hierarchical)
            comm.Barrier()
            if i >= args.warmup:
                samples[v].append(s)
                nic[v] += read_counter(args.nic) - before
            if progress is not None:
                progress.update(1)
    return [summarize(a, w, h, x, k, samples[v], nic[v] / args.iters if args.nic else float("nan"))
            for v, (a, w, h) in enumerate(variants)]


def summarize(algorithm: str, wire: str, schedule: str, x: np.ndarray, k: int, samples: list[CommStats],
              nic: float) -> Row:
    """One variant's row from its timed calls on every rank (collective)."""
    comm = runtime.comm()
    hierarchical = {"flat": False, "hier": True}.get(schedule, runtime.layout().hierarchical)
    # per-iteration maximum over ranks
    local = np.array([[s.total_s, s.select_s, s.comm_s, s.merge_s, s.skew_s, s.total_s - s.select_s]
                      for s in samples])
    worst = np.empty_like(local)
    comm.Allreduce(local, worst, op=MPI.MAX)
    counts = np.array([max(s.bytes_sent for s in samples), max(s.bytes_received for s in samples),
                       max(s.messages_sent for s in samples)], np.int64)
    counts_max = np.empty_like(counts)
    comm.Allreduce(counts, counts_max, op=MPI.MAX)
    tot = worst[:, 0] * 1e3
    med = lambda col: float(statistics.median(worst[:, col] * 1e3))  # noqa: E731
    entries = comm.allreduce(max(s.entries_sent for s in samples), op=MPI.MAX)
    per_entry = float(counts_max[0]) / entries if entries else float("nan")
    butterfly = algorithm in ("gtopk", "gtopk-exact")
    port = per_host(comm, statistics.mean(s.port_bytes for s in samples)) if butterfly else float("nan")
    return Row(algorithm, wire if algorithm in ("topk", "gtopk", "gtopk-exact") else "fp32", comm.Get_size(), len(x),
               k, str(x.dtype), float(statistics.median(tot)), float(tot.min()), float(tot.max()), med(1), med(2),
               med(3), int(counts_max[0]), int(counts_max[1]), int(counts_max[2]), per_entry, med(5), skew_ms=med(4),
               schedule="hier" if (butterfly and hierarchical) or (algorithm == "topk" and runtime.layout(
               ).hierarchical) else "flat", port_kb=port / 1e3,
               nic_kb=per_host(comm, nic) / 1e3)


def format_table(rows: list[Row]) -> str:
    dense = next((r for r in rows if r.algorithm == "dense"), None)
    with_model = any(not np.isnan(r.model_ms) for r in rows)
    head = (f"{'algorithm':<12} {'wire':<5} {'sched':<5} {'median ms':>10} {'min':>8} {'max':>8} {'select':>8} "
            f"{'comm':>8} {'merge':>8} {'rest':>8} {'sent KB':>10} {'recv KB':>10} {'msgs':>5} {'B/entry':>8}"
            f" {'vs dense':>9}")
    with_port = any(np.isfinite(r.port_kb) for r in rows)
    with_nic = any(np.isfinite(r.nic_kb) for r in rows)
    if with_port:
        head += f" {'port KB':>8}"
    if with_nic:
        head += f" {'NIC KB':>8}"
    with_skew = any(r.skew_ms for r in rows)
    if with_skew:
        head += f" {'skew':>7}"
    if with_model:
        head += f" {'model ms':>9} {'rest/wire':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{dense.median_ms / r.median_ms:8.1f}x" if dense and r.median_ms > 0 else f"{'':>9}"
        lines.append(f"{r.algorithm:<12} {r.wire:<5} {r.schedule:<5} {r.median_ms:10.2f} {r.min_ms:8.2f} "
                     f"{r.max_ms:8.2f} {r.select_ms:8.2f} {r.comm_ms:8.2f} {r.merge_ms:8.2f} {r.rest_ms:8.2f} "
                     f"{r.bytes_sent / 1e3:10.1f} {r.bytes_received / 1e3:10.1f} {r.messages:5d} "
                     f"{r.bytes_per_entry:8.2f} {ratio}"
                     + (f" {r.port_kb:8.1f}" if with_port else "") + (f" {r.nic_kb:8.1f}" if with_nic else "")
                     + (f" {r.skew_ms:7.2f}" if with_skew else "")
                     + (f" {r.model_ms:9.2f} {rest_over_wire(r)}" if with_model else ""))
    return "\n".join(lines)


def rest_over_wire(r: Row) -> str:
    """A flat gtopk row's rest (the call minus selection) over the butterfly's wire bound on the
    fitted network, log2(P) x alpha + the bytes it sent x beta: 1.0x is the wire alone."""
    if not np.isfinite(r.wire_ms) or r.wire_ms <= 0:
        return f"{'':>9}"
    return f"{r.rest_ms / r.wire_ms:8.2f}x"


def _local_costs(rows: list[Row], r: Row, common_selection: bool) -> tuple[float, float]:
    """(selection s, one merge s) used to model row r. With common_selection every sparse
    algorithm is charged the selection of gtopk's run (the fused error-feedback selection a
    training step pays), so predictions compare communication patterns, not selection variants."""
    ref = next((x for x in rows if x.algorithm == "gtopk" and x.wire == r.wire), r) if common_selection else r
    select_s = (ref.select_ms if r.algorithm != "dense" else 0.0) / 1e3
    return select_s, r.merge_ms / max(1, costmodel.log2p(r.ranks)) / 1e3


def _model(r: Row, net: costmodel.Network, p: int, select_s: float, per_merge: float) -> float:
    """The cost model's total (ms) for row r's algorithm at P = p, with the bytes per entry it measured."""
    measured = r.bytes_per_entry if r.algorithm in ("topk", "gtopk", "gtopk-exact") and np.isfinite(
        r.bytes_per_entry) else None
    return 1e3 * costmodel.total_time(r.algorithm, net, p, r.numel, r.k, select_s, per_merge,
                                      np.dtype(r.dtype).itemsize, measured)


def model_rows(rows: list[Row], net: costmodel.Network) -> None:
    """Fill each row's model_ms with the cost model's total for this run's P and its own selection."""
    for r in rows:
        r.model_ms = _model(r, net, r.ranks, *_local_costs(rows, r, common_selection=False))
        if r.algorithm == "gtopk" and r.schedule == "flat":  # (an --align agreement pass is not timed)
            r.wire_ms = 1e3 * (costmodel.log2p(r.ranks) * net.alpha + r.bytes_sent * net.beta)


def label(r: Row) -> str:
    return r.algorithm + ("" if r.wire == "fp32" else f"/{r.wire}") + ("/hier" if r.schedule == "hier" else "")


def predictions(rows: list[Row], net: costmodel.Network, ps: list[int]) -> dict[str, list[float]]:
    """Predicted total ms per algorithm for each P in ps (one selection time for all sparse ones)."""
    return {label(r): [_model(r, net, p, *_local_costs(rows, r, common_selection=True)) for p in ps] for r in rows}


def host_predictions(rows: list[Row], net: costmodel.Network, intra: costmodel.Network, hosts: list[int],
                     per_host: list[int]) -> str:
    """Predicted ms per call on H hosts x G ranks: dense, gTop-k flat and hierarchical (selection
    and merges of this run's flat gtopk row, bytes per entry as it measured)."""
    g = next((r for r in rows if r.algorithm == "gtopk" and r.schedule == "flat"), None) or next(
        r for r in rows if r.algorithm == "gtopk")
    select_s, per_merge = _local_costs(rows, g, common_selection=False)
    entry = g.bytes_per_entry if np.isfinite(g.bytes_per_entry) else None
    v = np.dtype(g.dtype).itemsize
    lines = [f"{'hosts':>6} {'x G':>4} {'P':>6} {'dense':>10} {'gtopk flat':>11} {'gtopk hier':>11} "
             f"{'port flat':>10} {'port hier':>10}  hier vs flat"]
    for gpus in per_host:
        for h in hosts:
            p = h * gpus
            local = 1e3 * (select_s + costmodel.log2p(p) * per_merge)
            t = {a: 1e3 * costmodel.layout_comm_time(a, net, intra, h, gpus, g.numel, g.k, v, entry)
                 for a in ("dense", "gtopk", "gtopk-hier")}
            wire_only = costmodel.Network(0.0, net.beta), costmodel.Network(0.0, 0.0)
            port = {a: 1e3 * costmodel.layout_comm_time(a, *wire_only, h, gpus, g.numel, g.k, v, entry)
                    for a in ("gtopk", "gtopk-hier")}
            lines.append(f"{h:>6} {gpus:>4} {p:>6} {t['dense']:10.2f} {t['gtopk'] + local:11.2f} "
                         f"{t['gtopk-hier'] + local:11.2f} {port['gtopk']:10.2f} {port['gtopk-hier']:10.2f}  "
                         f"{(t['gtopk'] + local) / (t['gtopk-hier'] + local):6.2f}x")
    return "\n".join(lines)


def format_predictions(pred: dict[str, list[float]], ps: list[int]) -> str:
    lines = [f"{'P':>6} " + " ".join(f"{a:>12}" for a in pred) + "   gtopk speedup vs dense / topk"]
    for i, p in enumerate(ps):
        cells = " ".join(f"{pred[a][i]:12.2f}" for a in pred)
        extra = ""
        if "gtopk" in pred and "dense" in pred and "topk" in pred:
            extra = f"   {pred['dense'][i] / pred['gtopk'][i]:8.1f}x / {pred['topk'][i] / pred['gtopk'][i]:5.1f}x"
        lines.append(f"{p:>6} {cells}{extra}")
    return "\n".join(lines)


def plot_from_csv(paths: list[str], out: str, field_name: str = "median_ms") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    numel = None
    for path in paths:
        with open(path) as f:
            for rec in csv.DictReader(f):
                name = rec["algorithm"] + ("" if rec.get("wire", "fp32") == "fp32" else f"/{rec['wire']}")
                series.setdefault(name, []).append((int(rec["ranks"]), float(rec[field_name])))
                numel = int(rec["numel"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for alg, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p for p, _ in pts], [t for _, t in pts], marker="o", label=alg)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("ranks P")
    what = {"median_ms": "whole call", "comm_ms": "communication", "select_ms": "selection",
            "merge_ms": "merge"}[field_name]
    ax.set_ylabel(f"{what} (ms per call, median, max over ranks)")
    ax.set_title(f"measured, {numel:,} float32 elements")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def plot_prediction(rows: list[Row], net: costmodel.Network, ps: list[int], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = sorted(set(ps) | {2, 4, 8, rows[0].ranks})
    pred = predictions(rows, net, ps)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in rows:
        (line,) = ax.plot(ps, pred[label(r)], label=f"{label(r)} (model)")
        ax.plot([r.ranks], [r.median_ms], marker="o", color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("ranks P")
    ax.set_ylabel("time per call (ms)")
    ax.set_title(f"alpha={net.alpha * 1e3:.3f} ms, beta={net.beta * 1e9:.2f} ns/B; dots: measured at P={rows[0].ranks}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot_from:
        if not args.plot:
            raise SystemExit("--plot-from needs --plot OUT.png")
        plot_from_csv(args.plot_from, args.plot, args.plot_field)
        print(f"wrote {args.plot}")
        return 0
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
              f"dtype={args.dtype} iters={args.iters} warmup={args.warmup}; {runtime.layout().describe()}; {mpi}",
              flush=True)
        if not args.no_progress:
            from tqdm import tqdm
            runs = sum(len(variants(a, args)) for a in args.algorithms)
            progress = tqdm(total=runs * (args.iters + args.warmup), desc="bench", file=sys.stderr, leave=False)
    rows = bench_variants([(a, w, h) for a in args.algorithms for w, h in variants(a, args)], x, k, args, progress)
    net = intra = None
    if args.model_fit:
        if p < 2:
            raise SystemExit("--model-fit needs at least 2 ranks")
        host_of = runtime.layout().host_of
        across = next((q for q in range(p) if host_of[q] != host_of[0]), 1)
        net = costmodel.fit(costmodel.ping_pong(comm, peer=across))  # between hosts when there are several
        inside = next((q for q in range(1, p) if host_of[q] == host_of[0]), None)
        if inside is not None:
            intra = costmodel.fit(costmodel.ping_pong(comm, peer=inside))
        elif args.predict_hosts:
            raise SystemExit("--predict-hosts needs a host with two ranks here (its shared-memory ping-pong)")
        model_rows(rows, net)
    if me == 0:
        if progress is not None:
            progress.close()
        print(format_table(rows))
        print("times: max over ranks per call, median over calls; sent/recv: payload bytes per rank per call"
              + ("; port: the butterfly's payload to other hosts per call, summed over a host's ranks" if any(
                  np.isfinite(r.port_kb) for r in rows) else "")
              + ("; NIC: bytes out of a host's port per call, measured" if args.nic else "")
              + ("; skew: barrier wait after selection, excluded from the times" if args.align else ""))
        if net is not None:
            print(f"fitted network: alpha = {net.alpha * 1e3:.4f} ms per message, beta = {net.beta * 1e9:.3f} ns "
                  f"per byte ({1 / net.beta / 1e6 if net.beta else float('inf'):.1f} MB/s)")
        if intra is not None:
            print(f"fitted link inside a host: alpha = {intra.alpha * 1e3:.4f} ms, beta = {intra.beta * 1e9:.3f} ns "
                  f"per byte ({1 / intra.beta / 1e6 if intra.beta else float('inf'):.1f} MB/s)")
        if args.predict_hosts:
            assert net is not None and intra is not None  # --predict-hosts implies --model-fit, a host pair
            print("predicted ms per call on H hosts x G ranks (one port per host, the links fitted above; "
                  "selection and merges as measured here; port: the seconds of bytes through one port):")
            print(host_predictions(rows, net, intra, args.predict_hosts, args.per_host))
        if args.predict:
            assert net is not None  # --predict implies --model-fit
            print("predicted time per call (ms); selection (gtopk's, for every sparse algorithm) and merge "
                  "as measured here:")
            print(format_predictions(predictions(rows, net, args.predict), args.predict))
        if args.plot:
            if net is None:
                raise SystemExit("--plot needs --model-fit (or --plot-from)")
            plot_prediction(rows, net, args.predict or [2, 4, 8, 16, 32], args.plot)
            print(f"wrote {args.plot}")
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

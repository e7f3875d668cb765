"""Scaling-efficiency tables from scripts/experiments/train.py CSVs (docs/experiments.md).

    .venv/bin/python scripts/experiments/scaling_table.py docs/data/scale_*.csv [--alpha-ms A --beta-ns B]

For each model: samples/s per rank at P = 1, 2, 4, 8 for dense, Top-k and gTop-k (last
epoch of each run), scaling efficiency = throughput per rank / dense throughput at P = 1,
and the per-step time breakdown (compute, compression, communication, other). Then the
same efficiency predicted to P = 32 ... 1024 by the alpha-beta cost model, from the
measured P = 1 compute time and P = 2 compression time per step. Prints Markdown.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict

from gtopk_mpi import costmodel

import models  # scripts/experiments/models.py

ALGOS = ("dense", "topk", "gtopk")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csvs", nargs="+")
    ap.add_argument("--alpha-ms", type=float, default=0.0055, help="fitted on the emulated cluster (bench)")
    ap.add_argument("--beta-ns", type=float, default=8.393, help="per byte; fitted on the emulated cluster")
    args = ap.parse_args()
    runs: dict[str, dict[tuple[str, int], dict]] = defaultdict(dict)
    for path in args.csvs:
        with open(path) as f:
            rows = list(csv.DictReader(f))
        last = rows[-1]
        steps = int(rows[-1]["steps"]) - (int(rows[-2]["steps"]) if len(rows) > 1 else 0)
        last["steps_in_epoch"] = steps
        runs[last["model"]][(last["algo"], int(last["ranks"]))] = last

    for model, table in sorted(runs.items()):
        base = float(table[("dense", 1)]["samples_per_s_per_rank"])
        ps = sorted({p for _, p in table})
        m = sum(p.numel() for p in models.build(model).parameters())
        print(f"### {model} ({m:,} parameters)\n")
        print("| P | " + " | ".join(f"{a} samples/s/rank | {a} efficiency" for a in ALGOS) + " |")
        print("|---|" + "---|---|" * len(ALGOS))
        for p in ps:
            cells = []
            for a in ALGOS:
                r = table.get((a, p))
                thr = float(r["samples_per_s_per_rank"]) if r else float("nan")
                cells += [f"{thr:.1f}", f"{100 * thr / base:.1f}%"]
            print(f"| {p} | " + " | ".join(cells) + " |")
        p8 = max(ps)
        eff = {a: float(table[(a, p8)]["samples_per_s_per_rank"]) / base for a in ALGOS if (a, p8) in table}
        if len(eff) == 3:
            print(f"\nAt P = {p8}: gTop-k efficiency / dense = {eff['gtopk'] / eff['dense']:.2f}x, "
                  f"/ Top-k = {eff['gtopk'] / eff['topk']:.2f}x\n")
        print("Time per step (ms): compute / compression / communication / other\n")
        print("| P | " + " | ".join(ALGOS) + " |")
        print("|---|" + "---|" * len(ALGOS))
        for p in ps:
            cells = []
            for a in ALGOS:
                r = table.get((a, p))
                if r is None:
                    cells.append("")
                    continue
                n = r["steps_in_epoch"]
                parts = [1e3 * float(r[k]) / n for k in ("compute_s", "compression_s", "communication_s", "other_s")]
                cells.append(" / ".join(f"{v:.0f}" for v in parts))
            print(f"| {p} | " + " | ".join(cells) + " |")

        # prediction from the cost model: compute (P = 1) + compression (P = 2) + modelled communication
        k = max(1, math.ceil(0.001 * m))
        r1 = table[("dense", 1)]
        compute = float(r1["compute_s"]) / r1["steps_in_epoch"]
        comp2 = {a: float(table[(a, 2)]["compression_s"]) / table[(a, 2)]["steps_in_epoch"]
                 for a in ALGOS if (a, 2) in table}
        print(f"\nPredicted efficiency (alpha = {args.alpha_ms} ms, beta = {args.beta_ns} ns/B; compute "
              f"{1e3 * compute:.0f} ms/step from P = 1, compression from P = 2; one rank per host):\n")
        print("| P | dense | topk | gtopk | gtopk / dense | gtopk / topk |")
        print("|---|---|---|---|---|---|")
        for alpha_ms, beta_ns, label in ((args.alpha_ms, args.beta_ns, ""), (0.436, 9.0, " (paper's α, β)")):
            net = costmodel.Network(alpha_ms * 1e-3, beta_ns * 1e-9)
            for p in (8, 32, 128, 1024):
                eff = {}
                for a in ALGOS:
                    step = compute + costmodel.comm_time(a, net, p, m, k) + (comp2.get(a, 0.0) if a != "dense" else 0)
                    eff[a] = compute / step
                pct = " | ".join(f"{100 * eff[a]:.1f}%" for a in ALGOS)
                ratios = f"{eff['gtopk'] / eff['dense']:.1f}x | {eff['gtopk'] / eff['topk']:.2f}x"
                print(f"| {p}{label} | {pct} | {ratios} |")
        print()


if __name__ == "__main__":
    main()

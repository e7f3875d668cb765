"""Tables of the DDP hooks vs the Horovod-style optimizer from scripts/experiments/train.py CSVs.

    .venv/bin/python scripts/experiments/ddp_table.py docs/data/ddp_*.csv          # time per step (last epoch)
    .venv/bin/python scripts/experiments/ddp_table.py --accuracy docs/data/conv_ddp_*.csv docs/data/conv_dense.csv

Time: per model and P, each run's last epoch: step time and its split (compute, compression,
communication, other; ms per step), samples/s per rank, and the speed-up over DDP's
allreduce. Accuracy: final test accuracy and loss of each run, and the difference to the
first run named ddp-allreduce. Prints Markdown.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict

ORDER = ["ddp-allreduce", "ddp-fp16", "ddp-powersgd1", "ddp-powersgd2", "ddp-powersgd4", "ddp-gtopk", "gtopk",
         "dense", "topk"]
LABEL = {"ddp-allreduce": "DDP allreduce", "ddp-fp16": "DDP fp16 hook", "ddp-powersgd1": "DDP PowerSGD rank 1",
         "ddp-powersgd2": "DDP PowerSGD rank 2", "ddp-powersgd4": "DDP PowerSGD rank 4",
         "ddp-gtopk": "DDP gTop-k hook (ours)", "gtopk": "gtopk_mpi.torch optimizer, gTop-k (ours)",
         "dense": "gtopk_mpi.torch optimizer, dense", "topk": "gtopk_mpi.torch optimizer, Top-k"}


def last_rows(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        with open(path) as f:
            rows.append(list(csv.DictReader(f))[-1])
    return sorted(rows, key=lambda r: ORDER.index(r["algo"]) if r["algo"] in ORDER else len(ORDER))


def time_tables(rows: list[dict]) -> str:
    out = []
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["model"], int(r["ranks"]))].append(r)
    for (model, p), rs in sorted(groups.items()):
        base = next((r for r in rs if r["algo"] == "ddp-allreduce"), None)
        out += [f"**{model}, P = {p}** (ms per step: compute / compression / communication / other)", "",
                "| run | step ms | split | samples/s/rank | vs DDP allreduce |", "|---|---|---|---|---|"]
        for r in rs:
            steps = int(r["steps"]) // int(r["epoch"])  # steps per epoch
            t = {key: 1e3 * float(r[key]) / steps for key in ("epoch_s", "compute_s", "compression_s",
                                                                "communication_s", "other_s")}
            speed = f"{float(r['samples_per_s_per_rank']) / float(base['samples_per_s_per_rank']):.2f}x" if base else ""
            out.append(f"| {LABEL.get(r['algo'], r['algo'])} | {t['epoch_s']:.0f} | {t['compute_s']:.0f} / "
                       f"{t['compression_s']:.0f} / {t['communication_s']:.0f} / {t['other_s']:.0f} | "
                       f"{float(r['samples_per_s_per_rank']):.1f} | {speed} |")
        out.append("")
    return "\n".join(out)


def accuracy_table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["algo"] == "ddp-allreduce"), None)
    out = ["| run | final test accuracy | vs DDP allreduce | final training loss |", "|---|---|---|---|"]
    for r in rows:
        acc = 100 * float(r["test_acc"])
        diff = f"{acc - 100 * float(base['test_acc']):+.2f}" if base and r is not base else ""
        wire = f", {r['wire']} wire" if r.get("wire") not in (None, "", "fp32") else ""
        out.append(f"| {LABEL.get(r['algo'], r['algo'])}{wire} | {acc:.2f}% | {diff} | {float(r['loss']):.4f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csvs", nargs="+")
    ap.add_argument("--accuracy", action="store_true", help="the accuracy table instead of the time tables")
    args = ap.parse_args()
    rows = last_rows(args.csvs)
    print(accuracy_table(rows) if args.accuracy else time_tables(rows))


if __name__ == "__main__":
    main()

"""Time to accuracy of the Fashion-MNIST runs: steps to reach dense's final accuracy minus one
point, times each run's step time on the emulated 1 GbE cluster (P = 4).

    python scripts/experiments/time_to_accuracy.py --models convnet resnet20 --out table.md --plot plot.png

Reads docs/data/fmnist_{model}_{run}.csv (10-epoch accuracy runs: cumulative steps and test
accuracy at each epoch's end, so "steps to target" has one epoch's resolution), the same run with
other seeds where there are some (..._seed{N}.csv: final accuracy is the seeds' mean, steps to
target their median, dense's final the mean of its seeds) and
docs/data/fmnist_step_{model}_{run}.csv (the same run's second epoch on the emulated cluster, in
the steady state: compression at the target density; with ..._round{N}.csv beside it, the
median over those rounds). Columns:

* an unfinished run (fewer epochs than dense) is compared with dense at its last epoch;
* how long the 10 epochs of training took here (4 ranks on 2 cores, without the evaluations);
* step (ms) on the emulated cluster, and its compute part (forward + backward; 2 cores for 4
  ranks, so compute is ~2x a dedicated core's);
* time to target on the emulated cluster: the sum of the steps' times, each phase of the run at
  its own measured step (:func:`phases`: a DDP run's first epoch is DDP allreduce, train.py's
  ``start_iter``; a sparsifying run's warm-up densities each have their own timing run,
  fmnist_step_{model}_{run}_at{density}.csv); a phase without one is costed at the steady
  state's step and the cell is marked with a dagger;
* time to target on a GPU cluster (projection): the same sum of (compute / S + the measured
  step's communication and compression), i.e. the wire as measured on 1 GbE beside a compute S
  times faster than a rank here (``--gpu-speedup``, default 50; an assumption, not a
  measurement: the ratio at which communication/computation would match GPU nodes);
* KB a step out of a host's port in the steady state, protocol headers and all
  (docs/data/fmnist_port_{model}_{run}.csv: the same timing run with train.py ``--nic``, the
  mean over the hosts' tx counters; run_experiments.sh fashion-ports), and MB out of the port
  to the target, phase by phase as the time (a phase without a port run at the steady state's
  KB a step, marked with the dagger);
* below each table, time to target again with the link 50x slower (20 Mbit/s,
  docs/data/fmnist_step20mbit_{model}_{run}.csv, run_experiments.sh fashion-scaled): the other way
  to make communication/computation what it is on GPU nodes on 1 GbE, measured rather than
  projected (what is neither compute nor wire, e.g. selection and ranks waiting on each other,
  then weighs as compute does), and that time / 50.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gtopk_mpi import config

T = TypeVar("T")
DATA = Path(__file__).resolve().parents[2] / "docs" / "data"
LABELS = {
    "dense": "dense (Horovod-style allreduce)",
    "gtopk0.001": "gTop-k rho=0.001, library defaults",
    "gtopk0.001_nofloor": "gTop-k rho=0.001, GTOPK_MIN_K=0",
    "gtopk0.001_warmep": "gTop-k rho=0.001, warm-up densities one epoch each",
    "gtopk0.001_mc": "gTop-k rho=0.001, DGC momentum correction",
    "gtopk0.001_exact": "gTop-k rho=0.001, exact values",
    "gtopk0.001_2x2": "gTop-k rho=0.001, 2 hosts x 2 ranks (hierarchical)",
    "gtopk0.01": "gTop-k rho=0.01",
    "gtopk0.01_exact": "gTop-k rho=0.01, exact values",
    "gtopk0.01_nofloor": "gTop-k rho=0.01, GTOPK_MIN_K=0",
    "gtopk0.01_exact_nofloor": "gTop-k rho=0.01, exact values, GTOPK_MIN_K=0",
    "topk0.001": "Top-k (allgather) rho=0.001",
    "topk0.01": "Top-k (allgather) rho=0.01",
    "ddp-gtopk0.001": "DDP + gTop-k hook rho=0.001",
    "ddp-gtopk0.001_start10": "DDP + gTop-k hook rho=0.001, compressing from iteration 10 (its default)",
    "ddp-gtopk0.001_start10_nowarm": "DDP + gTop-k hook rho=0.001, from iteration 10, GTOPK_DENSITY_WARMUP=none",
    "ddp-gtopk0.001_warmep": "DDP + gTop-k hook rho=0.001, warm-up densities one epoch each",
    "ddp-gtopk0.01": "DDP + gTop-k hook rho=0.01",
    "ddp-allreduce": "DDP allreduce",
    "ddp-powersgd4": "DDP + PowerSGD rank 4",
    "ddp-powersgd4_start10": "DDP + PowerSGD rank 4, compressing from iteration 10",
    "ddp-powersgd1": "DDP + PowerSGD rank 1",
}


def rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def port_kb(path: Path) -> float:
    """KB a step out of a host's port in a port run's last epoch."""
    return float(rows(path)[-1]["port_kb_per_step"])


def step_time(path: Path) -> tuple[float, float, int]:
    """(step s, compute s, rounds) of a timing run: its last epoch's, the median over its rounds
    (``path``, then ``{path.stem}_round{N}.csv`` beside it: run_experiments.sh's ROUNDS)."""
    steps, computes = [], []
    for p in [path, *sorted(path.parent.glob(f"{path.stem}_round*.csv"))]:
        r = rows(p)
        last, prev = r[-1], r[-2] if len(r) > 1 else None
        n = int(last["steps"]) - (int(prev["steps"]) if prev else 0)
        steps.append(float(last["epoch_s"]) / n)
        computes.append(float(last["compute_s"]) / n)
    return statistics.median(steps), statistics.median(computes), len(steps)


WARMUP = [float(d) for d in config.DENSITY_WARMUP.default.split(",")]  # the library's default warm-up
WARMUP_STEPS = config.DENSITY_WARMUP_STEPS.default                      # steps of each of its densities
SCALED_TAG, LINK_SCALE = "20mbit", 50.0  # fmnist_step20mbit_*: timing runs on a link 50x slower than 1 GbE
# run-name suffixes of variants that share their base run's step times but not its schedule
EPOCH_LONG_WARMUP = "_warmep"  # each warm-up density for one epoch (GTOPK_DENSITY_WARMUP_STEPS=468)
START10 = "_start10"           # a DDP hook compressing from iteration 10 (gTop-k's default), not one epoch
NO_WARMUP = "_nowarm"          # no warm-up densities (GTOPK_DENSITY_WARMUP=none)


def phases(name: str, steps_per_epoch: int) -> list[tuple[str, int]]:
    """A run's phases in order: (the run whose step time it has, its steps); the last phase
    lasts to the end (its steps are 0). A DDP run (but DDP allreduce itself) runs DDP allreduce
    first: one epoch (train.py's start_iter), or 10 steps for ..._start10; a Top-k or gTop-k run
    then has the library's warm-up densities, named {run}_at{density} (none for ..._nowarm)."""
    warm = not name.endswith(NO_WARMUP)
    plain = name.removesuffix(NO_WARMUP)
    base = plain.removesuffix(EPOCH_LONG_WARMUP).removesuffix(START10)
    first = 10 if plain.endswith(START10) else steps_per_epoch
    out = [("ddp-allreduce", first)] if base.startswith("ddp-") and base != "ddp-allreduce" else []
    if "topk" in base and warm:
        each = steps_per_epoch if name.endswith(EPOCH_LONG_WARMUP) else WARMUP_STEPS
        out += [(f"{base}_at{d:g}", each) for d in WARMUP]
    return out + [(base, 0)]


def phase_steps(steps: float, plan: list[tuple[str, int]]) -> list[tuple[str, float]]:
    """(run, steps) of each phase a run's first ``steps`` steps pass through."""
    out = []
    for i, (run, n) in enumerate(plan):
        take = steps if i == len(plan) - 1 else min(steps, n)
        out.append((run, take))
        steps -= take
    return out


def by_phase(data: Path, kind: str, model: str, plan: list[tuple[str, int]],
             read: Callable[[Path], T]) -> tuple[dict[str, T], str] | None:
    """({run: ``read`` of its docs/data/fmnist_{kind}_{model}_{run}.csv} for each phase's run, a
    phase without a file at the steady state's (the last phase's); the dagger when one had none),
    or None when the steady state has no file."""
    paths = {run: data / f"fmnist_{kind}_{model}_{run}.csv" for run, _ in plan}
    got = {run: read(path) for run, path in paths.items() if path.exists()}
    if plan[-1][0] not in got:
        return None
    steady = got[plan[-1][0]]
    return {run: got.get(run, steady) for run in paths}, "" if len(got) == len(paths) else " †"


def elapsed(steps: float, plan: list[tuple[str, int]], times: dict[str, tuple[float, float, int]],
            speedup: float) -> tuple[float, float]:
    """(seconds on the emulated cluster, seconds projected to a GPU cluster) of a run's first
    ``steps`` steps: each phase's steps at its (step s, compute s, rounds) from ``times``."""
    emulated = projected = 0.0
    for run, take in phase_steps(steps, plan):
        step, compute, _ = times[run]
        emulated += take * step
        projected += take * (compute / speedup + step - compute)
    return emulated, projected


def port_mb(steps: float, plan: list[tuple[str, int]], kb: dict[str, float]) -> float:
    """MB out of a host's port in a run's first ``steps`` steps: each phase's at its KB a step."""
    return sum(take * kb[run] for run, take in phase_steps(steps, plan)) / 1e3


def seeds(data: Path, model: str, name: str) -> list[list[dict[str, str]]]:
    """Every seed's rows of one run: fmnist_{model}_{name}.csv (seed 0), then ..._seed{N}.csv."""
    first = data / f"fmnist_{model}_{name}.csv"
    more = sorted(data.glob(f"fmnist_{model}_{name}_seed*.csv"),
                  key=lambda p: int(p.stem.rsplit("_seed", 1)[1]))
    return [rows(p) for p in ([first] if first.exists() else []) + more]


Curves = dict[str, list[tuple[float, float]]]


def table(model: str, speedup: float, data: Path = DATA) -> tuple[list[str], Curves, float]:
    """(the markdown lines, each run's (emulated s, accuracy %) per epoch, the target %)."""
    dense_runs = seeds(data, model, "dense")
    dense = dense_runs[0]
    dense_final = statistics.mean(float(r[-1]["test_acc"]) for r in dense_runs)
    target = dense_final - 0.01
    lines = [f"**{model}**: target {100 * target:.2f}% (dense's final {100 * dense_final:.2f}%"
             + (f", the mean of {len(dense_runs)} seeds," if len(dense_runs) > 1 else "") + " minus 1 point)", "",
             "| run | seeds | final acc. | vs dense | steps to target | run took (min) | step (ms), emulated 1 GbE | "
             "of which compute | time to target, emulated 1 GbE | GPU-cluster projection | port KB a step | "
             "port MB to target |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    curves, rounds, scaled_lines = {}, set(), []
    for name, label in LABELS.items():
        runs = seeds(data, model, name)
        if not runs:
            continue
        r = runs[0]
        final = statistics.mean(float(x[-1]["test_acc"]) for x in runs)
        never = "never" if len(r) >= len(dense) else f"not by epoch {len(r)}"
        if len(r) < len(dense):  # an unfinished run: its last epoch against dense's at the same epoch
            label = f"{label} (unfinished: {len(r)} of {len(dense)} epochs)"
            vs_final = float(dense[len(r) - 1]["test_acc"])
        else:
            vs_final = dense_final
        # each seed's first epoch at the target; the run's steps to target: their median (never = infinite)
        hits = [next((x for x in s if float(x["test_acc"]) >= target), None) for s in runs]
        steps = [math.inf if h is None else int(h["steps"]) for h in hits]
        median = statistics.median(steps)
        hit = None if math.isinf(median) else median
        plan = phases(name, int(r[0]["steps"]))
        timed = by_phase(data, "step", model, plan, step_time)
        if timed is not None:
            times, mark = timed
            step, compute, n = times[plan[-1][0]]  # the steady state's; it stands in for unmeasured phases
            rounds.add(n)
            costed = None if hit is None else elapsed(hit, plan, times, speedup)
            cols = [f"{1e3 * step:.0f}", f"{1e3 * compute:.0f}",
                    never if costed is None else f"{costed[0]:.0f} s{mark}",
                    never if costed is None else f"{costed[1]:.1f} s{mark}"]
            shown = f"{label} (mean of {len(runs)} seeds)" if len(runs) > 1 else label
            curves[shown] = [(elapsed(int(x["steps"]), plan, times, speedup)[0],
                              100 * statistics.mean(float(s[e]["test_acc"]) for s in runs if e < len(s)))
                             for e, x in enumerate(r)]
        else:
            cols = ["not measured"] * 2 + [never if hit is None else "-"] * 2
        ported = by_phase(data, "port", model, plan, port_kb)
        if ported is None:
            cols += ["not measured", never if hit is None else "-"]
        else:
            kb, port_mark = ported
            cols += [f"{kb[plan[-1][0]]:,.0f}", never if hit is None else f"{port_mb(hit, plan, kb):,.0f}{port_mark}"]
        slow = by_phase(data, f"step{SCALED_TAG}", model, plan, step_time)
        if slow is not None:
            slow_times, slow_mark = slow
            slow_step, slow_compute, _ = slow_times[plan[-1][0]]
            t = None if hit is None else elapsed(hit, plan, slow_times, 1.0)[0]
            slow_cell = (f"{never} | {never}" if t is None
                         else f"{t:.0f} s{slow_mark} | {t / LINK_SCALE:.1f} s{slow_mark}")
            scaled_lines.append(f"| {label} | {1e3 * slow_step:.0f} | {1e3 * slow_compute:.0f} | {slow_cell} |")
        epochs = ", ".join("-" if h is None else h["epoch"] for h in hits)
        reached = never if hit is None else f"{hit:,.0f} (epoch{'s' if len(runs) > 1 else ''} {epochs})"
        vs = 100 * (final - vs_final)
        took = statistics.mean(sum(float(x["epoch_s"]) for x in s) for s in runs) / 60
        lines.append(f"| {label} | {len(runs)} | {100 * final:.2f}% | {vs:+.2f} | {reached} | {took:.1f} | "
                     + " | ".join(cols) + " |")
    if rounds:
        n = f"{min(rounds)}" if len(rounds) == 1 else f"{min(rounds)} to {max(rounds)}"
        lines += ["", f"Step times: each the median of {n} timing round{'s' if max(rounds) > 1 else ''} "
                  "(run_experiments.sh fashion-steps, ROUNDS)."]
    if scaled_lines:
        lines += ["", f"{model} with the link at 1 Gbit/s / {LINK_SCALE:g} (emulated, one timing round; "
                  "run_experiments.sh fashion-scaled):", "",
                  "| run | step (ms) | of which compute | time to target | the same / "
                  f"{LINK_SCALE:g} (a GPU cluster on 1 GbE) |", "|---|---|---|---|---|", *scaled_lines]
    if any(" †" in line for line in lines):
        lines += ["", "† a phase of this run (a DDP run's first epoch, or warm-up densities) has no timing (port) "
                  "run of its own: costed at the steady state's step (bytes a step)."]
    return lines, curves, 100 * target


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["convnet", "resnet20"])
    p.add_argument("--gpu-speedup", type=float, default=50.0)
    p.add_argument("--data", type=Path, default=DATA, help="where the CSVs are (default docs/data)")
    p.add_argument("--out", help="write the markdown tables here (default: print)")
    p.add_argument("--plot", help="PNG of accuracy against time on the emulated cluster (a run with several "
                   "seeds: their mean accuracy at each epoch)")
    args = p.parse_args()
    out, all_curves, targets = [], {}, {}
    for model in args.models:
        lines, curves, targets[model] = table(model, args.gpu_speedup, args.data)
        out += lines + [""]
        all_curves[model] = curves
    text = "\n".join(out)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(args.models), figsize=(7 * len(args.models), 7.5), squeeze=False)
        for ax, model in zip(axes[0], args.models):
            for i, (label, pts) in enumerate(all_curves[model].items()):  # 10 colours, then dashed
                ax.plot([t / 60 for t, _ in pts], [a for _, a in pts], marker=".", label=label,
                        linestyle="-" if i < 10 else "--")
            ax.axhline(targets[model], color="black", linewidth=0.8, linestyle=":", label="target")
            ax.set_ylim(targets[model] - 5, None)
            ax.set_title(f"{model}, Fashion-MNIST, P = 4, emulated 1 GbE")
            ax.set_xlabel("wall time (min): steps x measured step time")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12))
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120, bbox_inches="tight")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The user-facing scripts run end to end (small sizes, 2 ranks)."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mpi_launch import ROOT, run

pytest.importorskip("torch")


@pytest.mark.parametrize("compression", ["none", "fp16", "topk", "gtopk"])
def test_train_synthetic(compression):
    proc = run(2, ["scripts/experiments/train_synthetic.py", "--model", "cnn", "--batch-size", "8", "--num-iters", "2",
                   "--num-batches-per-iter", "2", "--num-warmup-batches", "1", "--compression", compression,
                   "--density", "0.01"], timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Total img/sec on 2 rank(s):" in proc.stdout, proc.stdout


def test_bench_module_runs_and_writes_csv(tmp_path):
    out = tmp_path / "bench.csv"
    proc = run(3, ["-m", "gtopk_mpi.bench", "--numel", "20000", "--density", "0.01", "--iters", "2", "--warmup", "1",
                   "--no-progress", "--csv", str(out)], timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    header = out.read_text().splitlines()[0].split(",")
    for field in ("algorithm", "ranks", "numel", "k", "median_ms", "select_ms", "comm_ms", "merge_ms",
                  "bytes_sent", "bytes_received", "messages"):
        assert field in header
    assert len(out.read_text().splitlines()) == 1 + 5   # dense, topk, gtopk, gtopk-exact, gtopk-tree


@pytest.mark.parametrize("algo", ["dense", "topk", "gtopk"])
def test_train_script_learns_and_writes_csv(algo, tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / f"{algo}.csv"
    proc = run(2, ["scripts/experiments/train.py", "--model", "mlp", "--data", "digits", "--algo", algo,
                   "--density", "0.01", "--density-warmup", "0.25", "--epochs", "4", "--batch-size", "16", "--lr",
                   "0.1", "--quiet", "--csv", str(out)], timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out) as f:
        rows = list(csv.DictReader(f))
    for field in ("algo", "values", "model", "data", "ranks", "epoch", "steps", "density", "lr", "loss", "test_acc",
                  "samples_per_s_per_rank", "compute_s", "compression_s", "communication_s", "other_s", "epoch_s"):
        assert field in rows[0], field
    assert len(rows) == 4 and rows[0]["ranks"] == "2"
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    if algo != "dense":
        assert float(rows[0]["density"]) == 0.25 and float(rows[-1]["density"]) == 0.01


def test_soak_check_runs_short():
    """scripts/bench/soak.py, shortened: RSS flat, conservation exact, no thread left after shutdown."""
    proc = run(2, ["scripts/bench/soak.py", "--calls", "300", "--steps", "100", "--numel", "200000"], timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "conservation exact: True" in proc.stdout and proc.stdout.count("threads left after shutdown: none; OK") == 2


@pytest.mark.parametrize("hook", ["allreduce", "fp16", "powersgd:1", "gtopk"])
def test_train_ddp_under_torchrun_without_mpiexec(hook, tmp_path):
    """scripts/experiments/train.py --ddp under torchrun with no mpiexec on PATH (the mpich wheel's stays in
    the venv's bin, which is not on this PATH): DDP with each hook learns and writes its CSV. ``--nic``
    on the loopback's tx counter (gloo's traffic between the two ranks): DDP allreduce's port column
    holds at least what each step's allreduce must send (the model's float32 gradient)."""
    pytest.importorskip("sklearn")
    lo = Path("/sys/class/net/lo/statistics/tx_bytes")
    nic = ["--nic", str(lo)] if lo.exists() else []
    env = {**os.environ, "PATH": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    assert shutil.which("mpiexec", path=env["PATH"]) is None and shutil.which("mpirun", path=env["PATH"]) is None
    out = tmp_path / "ddp.csv"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "scripts/experiments/train.py", "--ddp", "--hook", hook, "--model", "mlp", "--data",
                           "digits", "--density", "0.01", "--epochs", "3", "--batch-size", "16", "--start-iter", "10",
                           "--quiet", "--csv", str(out), *nic], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and rows[0]["algo"] == "ddp-" + hook.replace(":", "") and rows[0]["ranks"] == "2"
    if nic and hook == "allreduce":
        sys.path.insert(0, str(ROOT / "scripts" / "experiments"))
        try:
            import models
        finally:
            sys.path.remove(str(ROOT / "scripts" / "experiments"))
        m = sum(p.numel() for p in models.build("mlp", "digits").parameters())
        assert all(float(r["port_kb_per_step"]) >= 4 * m / 1e3 for r in rows), [r["port_kb_per_step"] for r in rows]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    if hook == "gtopk":
        assert float(rows[-1]["density"]) == 0.01 and float(rows[-1]["communication_s"]) > 0


def test_time_to_accuracy_takes_the_median_over_seeds(tmp_path):
    """scripts/experiments/time_to_accuracy.py on hand-made CSVs: dense's target from the mean
    of its seeds' finals, each run's steps to target the median over seeds (never = infinite),
    each step costed at its phase's measured step time (a DDP run's first epoch of DDP
    allreduce, the warm-up densities; a phase with no timing run at the steady step, marked), a
    step time with several rounds at their median; the port KB a step of a port run's last epoch,
    and the port MB to the target phase by phase as the time."""
    np = pytest.importorskip("numpy")
    fields = ["epoch", "steps", "test_acc", "epoch_s", "compute_s"]

    def write(name, accs, epoch_s=10.0, compute_s=5.0, steps=100, kind="fmnist_convnet"):
        with open(tmp_path / f"{kind}_{name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for e, acc in enumerate(accs, 1):
                w.writerow({"epoch": e, "steps": e * steps, "test_acc": acc, "epoch_s": epoch_s,
                            "compute_s": compute_s})

    dense = {"dense": [0.85, 0.905, 0.90], "dense_seed1": [0.88, 0.91, 0.92]}
    gtopk = {"gtopk0.001": [0.80, 0.85, 0.95], "gtopk0.001_seed1": [0.80, 0.85, 0.89],
             "gtopk0.001_seed2": [0.93, 0.80, 0.91]}
    topk = {"topk0.001": [0.80, 0.85, 0.89], "topk0.001_seed7": [0.80, 0.95, 0.91]}
    hook = {"ddp-gtopk0.001": [0.80, 0.91, 0.92]}
    for name, accs in {**dense, **gtopk, **topk, **hook}.items():
        write(name, accs)
    # timing runs (2 epochs of 20 steps; the second counts), (step s, compute s): gTop-k's steady state
    # and two of its four warm-up densities; the hook's steady state, all its warm-up and DDP allreduce
    timed = {"gtopk0.001": (0.15, 0.05), "gtopk0.001_at0.25": (0.3, 0.1), "gtopk0.001_at0.0625": (0.2, 0.1),
             "ddp-gtopk0.001": (0.11, 0.08), "ddp-allreduce": (0.25, 0.05)}
    timed |= {f"ddp-gtopk0.001_at{d}": (0.12 + i / 100, 0.08) for i, d in enumerate(["0.25", "0.0625", "0.0156",
                                                                                       "0.004"])}
    for name, (step, compute) in timed.items():
        write(name, [0.0, 0.0], epoch_s=20 * step, compute_s=20 * compute, steps=20, kind="fmnist_step_convnet")
    # the hook's steady state in three rounds: the medians, taken apart, are the (0.11, 0.08) above
    for name, (step, compute) in {"ddp-gtopk0.001": (0.15, 0.07), "ddp-gtopk0.001_round2": (0.10, 0.09),
                                  "ddp-gtopk0.001_round3": (0.11, 0.08)}.items():
        write(name, [0.0, 0.0], epoch_s=20 * step, compute_s=20 * compute, steps=20, kind="fmnist_step_convnet")
    # the port columns: the last epoch of a port run, gTop-k's steady state and its first warm-up density
    # (its other densities at the steady state's bytes; the hook has none)
    for name, kb in {"gtopk0.001": 1234.4, "gtopk0.001_at0.25": 5000.0}.items():
        with open(tmp_path / f"fmnist_port_convnet_{name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["epoch", "steps", "port_kb_per_step"])
            w.writeheader()
            w.writerows([{"epoch": 1, "steps": 20, "port_kb_per_step": 900.0},
                         {"epoch": 2, "steps": 40, "port_kb_per_step": kb}])
    # the link 50x slower: the hook's steady state and DDP allreduce timed there, its warm-up densities not
    for name, (step, compute) in {"ddp-gtopk0.001": (0.2, 0.08), "ddp-allreduce": (2.0, 0.05)}.items():
        write(name, [0.0, 0.0], epoch_s=20 * step, compute_s=20 * compute, steps=20, kind="fmnist_step20mbit_convnet")
    out = tmp_path / "table.md"
    proc = subprocess.run([sys.executable, "scripts/experiments/time_to_accuracy.py", "--models", "convnet",
                           "--data", str(tmp_path), "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    target = np.mean([a[-1] for a in dense.values()]) - 0.01

    def median_steps(runs):
        return float(np.median([next((100 * (e + 1) for e, a in enumerate(acc) if a >= target), np.inf)
                                for acc in runs.values()]))

    table = {line.split(" | ")[0].lstrip("| "): line.strip(" |").split(" | ") for line in out.read_text().splitlines()
             if line.startswith("| ") and not line.startswith("| run") and line.count(" | ") > 8}  # not the slow link's
    assert f"target {100 * target:.2f}%" in out.read_text()
    row = table["gTop-k rho=0.001, library defaults"]
    assert row[1] == "3" and row[2] == f"{100 * np.mean([a[-1] for a in gtopk.values()]):.2f}%"
    assert median_steps(gtopk) == 300 and row[4] == "300 (epochs 3, -, 1)"

    def costed(phases, steps):  # (emulated s, projected s) of the first steps, one entry per step
        per_step = np.concatenate([np.full((n, 2), timed.get(run, timed[phases[-1][0]])) for run, n in phases])
        first = per_step[:steps]
        return first[:, 0].sum(), (first[:, 1] / 50 + first[:, 0] - first[:, 1]).sum()

    # gTop-k: 100 steps at each warm-up density (0.0156 and 0.004 unmeasured: the steady step), then steady
    emulated, projected = costed([("gtopk0.001_at0.25", 100), ("gtopk0.001_at0.0625", 100), ("x", 100),
                                  ("x", 100), ("gtopk0.001", 1000)], 300)
    assert row[6:] == ["150", "50", f"{emulated:.0f} s †", f"{projected:.1f} s †", "1,234",
                       f"{(100 * 5000 + 200 * 1234.4) / 1e3:,.0f} †"]
    assert "† a phase" in out.read_text() and "each the median of 1 to 3 timing rounds" in out.read_text()
    # the hook: one epoch (100 steps) of DDP allreduce, then its first warm-up density: all measured
    emulated, projected = costed([("ddp-allreduce", 100), ("ddp-gtopk0.001_at0.25", 100),
                                  ("ddp-gtopk0.001", 1000)], 200)
    assert table["DDP + gTop-k hook rho=0.001"][6:] == ["110", "80", f"{emulated:.0f} s", f"{projected:.1f} s",
                                                         "not measured", "-"]
    # slowed link: the hook's table row (the last row of that label), its first epoch at DDP allreduce's 2 s a step
    slow = [line.strip(" |").split(" | ") for line in out.read_text().splitlines()
            if line.startswith("| DDP + gTop-k hook rho=0.001 |")][-1]
    t = 100 * 2.0 + 100 * 0.2
    assert "convnet with the link at 1 Gbit/s / 50" in out.read_text()
    assert slow[1:] == ["200", "80", f"{t:.0f} s †", f"{t / 50:.1f} s †"]
    assert np.isinf(median_steps(topk)) and table["Top-k (allgather) rho=0.001"][4] == "never"
    assert table["dense (Horovod-style allreduce)"][4] == f"{median_steps(dense):,.0f} (epochs 2, 2)"


def test_every_fashion_run_has_a_row_in_the_tables():
    """Each run name of run_experiments.sh's FASHION_ARGS (the runs FASHION_PLAN and
    fashion-seeds can write) has a label in time_to_accuracy.py, whose tables list only the
    labelled runs: an unlabelled run's CSV would be left out of the report without a word."""
    script = (ROOT / "scripts" / "experiments" / "run_experiments.sh").read_text()
    block = script.split("declare -A FASHION_ARGS=(", 1)[1].split("\n)", 1)[0]
    names = re.findall(r"^\s*\[([^\]]+)\]=", block, re.M)
    plan = re.findall(r"\b(?:convnet|resnet20|vgg16)/([\w.-]+)", script)
    sys.path.insert(0, str(ROOT / "scripts" / "experiments"))
    try:
        import time_to_accuracy
    finally:
        sys.path.remove(str(ROOT / "scripts" / "experiments"))
    assert len(names) > 10 and set(plan) <= set(names)
    assert sorted(set(names) - set(time_to_accuracy.LABELS)) == []


def test_every_timed_fashion_run_is_a_trained_run():
    """fashion-steps times each FASHION_TIMED entry on every model (a ``model/run`` entry on
    that model only): each (model, run) it times has a training run in FASHION_PLAN, so no
    sitting spends time on a step time no table reads. fashion-seeds reruns FASHION_SEEDED's
    entries with other seeds: each is a FASHION_PLAN run too (a name FASHION_ARGS lacks would
    train with train.py's defaults, not the run it names)."""
    script = (ROOT / "scripts" / "experiments" / "run_experiments.sh").read_text()

    def array(name: str) -> list[str]:
        return re.search(rf"^{name}=\((.*?)\)", script, re.M | re.S)[1].split()

    plan = set(array("FASHION_PLAN"))
    models = re.search(r"\$\{FASHION_MODELS:-([^}]*)\}", script)[1].split()  # the timing loop's default
    timed = [(m, e.split("/")[-1]) for e in array("FASHION_TIMED") for m in models if e.split("/")[0] in (m, e)]
    assert len(timed) > 15
    assert sorted(f"{m}/{r}" for m, r in timed if f"{m}/{r}" not in plan) == []
    seeded = array("FASHION_SEEDED")
    assert len(seeded) >= 10
    assert sorted(e for e in seeded if e not in plan) == []
    assert sorted(r for r in array("FASHION_SCALED") if f"convnet/{r}" not in plan) == []  # fashion-scaled's

"""Run by tests/test_torch_mpi.py under mpiexec: train a small model with gTop-k (several
buckets, DGC momentum correction, a density warm-up) for steps [--start, --stop), after
loading every rank's checkpoint ``--load PREFIX``, saving ``--save PREFIX`` (one file per
rank) after step --save-at (default: the last). Each entry of --runs is one such run, from a
fresh model and optimizer, in this process: ``FUSION`` (GTOPK_FUSION_THRESHOLD, bytes per
bucket) or ``FUSION:drop`` (load without the error-feedback state). After each run rank 0
prints ``DIGEST <run> <sha256>`` of the parameters and of every rank's error-feedback
state, so a resumed run can be compared bit for bit with an uninterrupted one.
"""

from __future__ import annotations

import argparse
import hashlib
import os

import torch

import gtopk_mpi.torch as hvd

ap = argparse.ArgumentParser()
ap.add_argument("--start", type=int, default=0)
ap.add_argument("--stop", type=int, required=True)
ap.add_argument("--load")
ap.add_argument("--save")
ap.add_argument("--save-at", type=int, help="save after this many steps (default: --stop)")
ap.add_argument("--load-rank", type=int, help="load this rank's checkpoint instead of one's own")
ap.add_argument("--runs", default="600", help="comma-separated FUSION or FUSION:drop (600: several buckets)")
ap.add_argument("--check-loaded", action="store_true",
                help="after loading, lay the error feedback out in this run's buckets and print INTACT if every "
                     "parameter's residual and velocity equals the checkpoint's, entry for entry")
args = ap.parse_args()

torch.set_num_threads(1)
hvd.init()
r = hvd.rank()


def load(model: torch.nn.Module, opt, drop: bool) -> None:
    """Load this rank's checkpoint (or --load-rank's); a refused load ends every rank."""
    ckpt = torch.load(f"{args.load}.rank{r if args.load_rank is None else args.load_rank}.pt")
    model.load_state_dict(ckpt["model"])
    if drop:
        del ckpt["optimizer"][hvd.ERROR_FEEDBACK_KEY]
    error = None
    try:
        opt.load_state_dict(ckpt["optimizer"])
    except ValueError as e:
        error = f"rank {r}: ValueError: {e}"
    if any(hvd.allgather_object(error)):  # a refused load ends every rank, not just this one
        print(error or f"rank {r}: stopping", flush=True)
        hvd.shutdown()
        raise SystemExit(3)
    if args.check_loaded:
        ef, saved = opt.error_feedback, ckpt["optimizer"][hvd.ERROR_FEEDBACK_KEY]
        for b in opt._buckets:
            ef.place(b.layout, torch.zeros(b.numel))
        placed = all(not ef.pending[kind] for kind in ("residuals", "velocities"))
        same = all(ef.per_parameter(kind).keys() == saved[kind].keys()
                   and all(torch.equal(t, saved[kind][n].reshape(-1)) for n, t in ef.per_parameter(kind).items())
                   for kind in ("residuals", "velocities"))
        nonzero = any(float(t.abs().sum()) > 0 for t in saved["residuals"].values())
        ok = hvd.allgather_object(placed and same and nonzero)
        if r == 0:
            print(f"BUCKETS {len(opt._buckets)} " + ("INTACT" if all(ok) else f"DIFFERENT {ok}"), flush=True)


def train(spec: str) -> None:
    """One run from a fresh model and optimizer: ``FUSION`` or ``FUSION:drop`` (see --runs)."""
    fusion, _, drop = spec.partition(":")
    os.environ["GTOPK_FUSION_THRESHOLD"] = fusion
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05),
                                   named_parameters=model.named_parameters(),
                                   compression=hvd.Compression.gtopk(0.05), momentum_correction=0.9,
                                   density_warmup=[0.3], density_warmup_steps=4)
    if args.load:
        load(model, opt, drop == "drop")
    for step in range(args.start, args.stop):
        g = torch.Generator().manual_seed(1000 * step + r)
        x, y = torch.randn(8, 12, generator=g), torch.randn(8, 1, generator=g)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if args.save and step + 1 == (args.stop if args.save_at is None else args.save_at):
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, f"{args.save}.rank{r}.pt")
    ef = opt.error_feedback
    mine = b"".join(t.numpy().tobytes() for kind in ("residuals", "velocities")
                    for _, t in sorted(ef.per_parameter(kind).items()))
    everyone = hvd.allgather_object(mine + str(ef.step).encode())
    if r == 0:
        params = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
        print(f"DIGEST {spec} " + hashlib.sha256(params + b"".join(everyone)).hexdigest(), flush=True)


for spec in args.runs.split(","):
    train(spec)
hvd.shutdown()

"""Training experiments: dense vs Top-k vs gTop-k S-SGD, launched with mpiexec.

    mpiexec -n 4 .venv/bin/python scripts/experiments/train.py --model mlp --data digits --algo gtopk --density 0.001 \\
        --density-warmup 0.25,0.0625,0.0156,0.004 --epochs 40 --csv runs/gtopk.csv
    .venv/bin/python scripts/experiments/train.py --plot-from runs/dense.csv runs/gtopk.csv --plot curves.png

``--ddp`` trains a DistributedDataParallel model with a communication hook instead
(``--hook allreduce | fp16 | powersgd:RANK | gtopk``), launched by torchrun (no MPI needed)
or mpiexec:

    torchrun --standalone --nproc-per-node 2 scripts/experiments/train.py --ddp --hook gtopk --density 0.001

Data never comes from the network: ``fashion-mnist`` is Fashion-MNIST from its IDX files
(``--data-dir``, by default where Debian's dataset-fashion-mnist puts them; 60,000 training
images, each rank trains on its own shard, accuracy on the whole 10,000-image test set);
``digits`` is scikit-learn's bundled 8x8 handwritten digits (real images; a fixed 80/20
split, each rank trains on its own shard, accuracy on the whole test set: the CI-sized
smoke); ``synthetic`` is random CIFAR-shaped
images or token streams (for throughput). Each epoch logs loss, test accuracy,
samples/s per rank and the time split into compute (forward + backward), compression
(top-k selection with the residual, merges) and communication (inside MPI), as the
paper's breakdown; rank 0 writes the CSV and shows a progress bar. With --ddp the hook
works inside backward: compute is forward + backward timed alone (DDP's no_sync) at the
start, and what each backward took beyond it is the hook's cost, reported as communication
(for gTop-k less its selection and merges, which are compression). ``--nic`` adds what
left each host's port a step (a byte counter read around the steps, evaluations excluded).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

CSV_FIELDS = ["algo", "values", "wire", "layout", "model", "data", "ranks", "epoch", "steps", "density", "lr", "loss",
              "test_acc", "samples_per_s_per_rank", "compute_s", "compression_s", "communication_s", "other_s",
              "epoch_s", "port_kb_per_step"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlp", help="digits: mlp, cnn; fashion-mnist: resnet20, vgg16, convnet, "
                   "hvd-net, mlp; synthetic: resnet20, vgg16, lstm-small, lstm")
    p.add_argument("--data", choices=("digits", "fashion-mnist", "synthetic"), default="digits")
    p.add_argument("--data-dir", default=None, help="fashion-mnist: the directory of its four IDX files "
                   "(default: /usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist)")
    p.add_argument("--algo", choices=("dense", "topk", "gtopk"), default="gtopk")
    p.add_argument("--ddp", action="store_true", help="PyTorch DistributedDataParallel with a communication hook "
                   "(--hook) instead of gtopk_mpi.torch's DistributedOptimizer (--algo); launch with torchrun or "
                   "mpirun")
    p.add_argument("--hook", default="gtopk", help="--ddp: allreduce, fp16, powersgd:RANK or gtopk (default)")
    p.add_argument("--bucket-cap-mb", type=float, default=None,
                   help="--ddp: DDP's bucket size in MB (default: DDP's, 25)")
    p.add_argument("--start-iter", type=int, default=None,
                   help="--ddp: plain allreduce steps before powersgd / gtopk compress (default: one epoch, >= 2)")
    p.add_argument("--values", choices=("merged", "exact"), default="merged", help="gtopk's values mode")
    p.add_argument("--wire", choices=("fp32", "bf16", "fp16", "raw"), default=None,
                   help="message format of topk/gtopk (default: GTOPK_WIRE, else fp32)")
    p.add_argument("--hierarchical", choices=("auto", "0", "1"), default=None,
                   help="gTop-k's schedule when ranks share hosts (sets GTOPK_HIERARCHICAL; default: auto)")
    p.add_argument("--density", type=float, default=0.001)
    p.add_argument("--density-warmup", default=None, help="comma-separated densities, one per warm-up "
                   "epoch; none: no warm-up (default: the library's, GTOPK_DENSITY_WARMUP for "
                   "GTOPK_DENSITY_WARMUP_STEPS steps each)")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate (after warm-up)")
    p.add_argument("--lr-warmup-epochs", type=int, default=0, help="ramp the lr from lr/P over this many epochs")
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--momentum-correction", action="store_true",
                   help="topk/gtopk: DGC's momentum correction with --momentum (SGD's own momentum then 0)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="synthetic data: steps an epoch (default 10); real data: at most this many (for timing)")
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--csv", help="write per-epoch rows here (rank 0)")
    p.add_argument("--nic", metavar="FILE", help="a byte counter of this rank's host port, read around each "
                   "epoch's steps (e.g. /sys/class/net/gtknet/statistics/tx_bytes on the emulated cluster): the "
                   "CSV's port_kb_per_step, KB a step that left the port, headers and all (the mean over ranks)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines, no progress bar")
    p.add_argument("--plot-from", nargs="+", metavar="CSV", help="plot loss/accuracy curves of these runs and exit")
    p.add_argument("--plot", help="PNG to write with --plot-from")
    return p.parse_args()


def read_counter(path: str | None) -> int:
    """The byte counter at ``path`` (0 without one)."""
    if path is None:
        return 0
    with open(path) as f:
        return int(f.read().strip())


def plot_runs(paths: list[str], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    runs = []
    for path in paths:
        with open(path) as f:
            rows = list(csv.DictReader(f))
        r0 = rows[0]
        label = (f"{r0['algo']}" + (f" ({r0['values']})" if r0["algo"] == "gtopk" else "")
                 + (f" {r0['wire']}" if r0.get("wire") not in (None, "", "fp32") else "") + f", P={r0['ranks']}"
                 + (f" ({r0['layout']})" if r0.get("layout", "").endswith("hier") else ""))
        runs.append([label, path, rows])
    labels = [r[0] for r in runs]
    for run in runs:  # runs the columns do not tell apart are named by their files
        if labels.count(run[0]) > 1:
            run[0] = Path(run[1]).stem
    for label, _path, rows in runs:
        epochs = [int(r["epoch"]) for r in rows]
        ax_loss.plot(epochs, [float(r["loss"]) for r in rows], label=label)
        if rows[0]["test_acc"] not in ("", "nan"):
            ax_acc.plot(epochs, [100 * float(r["test_acc"]) for r in rows], label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_yscale("log")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def digits_data(rank: int, size: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)  # N x 1 x 8 x 8
    y = torch.tensor(d.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    n_train = int(0.8 * len(y))
    train, test = order[:n_train], order[n_train:]
    shard = train[rank::size]
    return (x[shard], y[shard]), (x[test], y[test])


def fashion_mnist_data(rank: int, size: int, data_dir: str | None):
    import fashion_mnist  # scripts/experiments/fashion_mnist.py

    where = data_dir or fashion_mnist.DEFAULT_DIR
    try:
        train_images, train_labels = fashion_mnist.load("train", where)
        test_images, test_labels = fashion_mnist.load("test", where)
    except fashion_mnist.DatasetMissing as e:
        raise SystemExit(f"train.py: {e}") from None
    order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(1234))
    shard = order[rank::size].numpy()
    x_train, y_train = fashion_mnist.normalized(train_images[shard]), torch.from_numpy(train_labels[shard])
    return (x_train, y_train), (fashion_mnist.normalized(test_images), torch.from_numpy(test_labels))


class DdpOptimizer:
    """--ddp: a plain torch optimizer over the DDP model (whose hook reduces the gradients inside
    backward), with DistributedOptimizer's timings(): the gTop-k hook's selection + merges as
    compression, its exchanges as communication (other hooks: both 0, their time is in compute)."""

    def __init__(self, base: torch.optim.Optimizer, state=None):
        self.base, self.state, self.param_groups = base, state, base.param_groups
        self._t = {"compression": 0.0, "communication": 0.0}

    def zero_grad(self) -> None:
        self.base.zero_grad()

    def step(self) -> None:
        self.base.step()
        if self.state is not None:
            for s in self.state.stats:
                self._t["compression"] += s.select_s + s.merge_s
                self._t["communication"] += s.comm_s + s.skew_s
            self.state.stats = []

    def current_density(self) -> float:
        st = self.state
        return st.current_density() if st is not None and st.iter >= st.start_iter else 1.0

    def timings(self, reset: bool = False) -> dict[str, float]:
        out = dict(self._t)
        if reset:
            self._t = dict.fromkeys(self._t, 0.0)
        return out


def ddp_optimizer(args, model, steps_per_epoch: int, warmup: list[float] | None, warmup_steps: int | None):
    """(the DDP model with args.hook registered, its DdpOptimizer)."""
    import torch.distributed as dist  # noqa: F401
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
    from torch.nn.parallel import DistributedDataParallel

    from gtopk_mpi.torch import ddp

    cap = args.bucket_cap_mb
    net = DistributedDataParallel(model, **({} if cap is None else {"bucket_cap_mb": cap}))
    start = args.start_iter if args.start_iter is not None else max(2, steps_per_epoch)
    state = None
    if args.hook == "allreduce":
        net.register_comm_hook(None, default_hooks.allreduce_hook)
    elif args.hook == "fp16":
        net.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif args.hook.startswith("powersgd:"):
        ps = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=int(args.hook.split(":")[1]),
                                         start_powerSGD_iter=start, use_error_feedback=True, warm_start=True)
        net.register_comm_hook(ps, powerSGD_hook.powerSGD_hook)
    elif args.hook == "gtopk":
        state = ddp.GTopkState(density=args.density, start_iter=start, values=args.values, wire=args.wire,
                               density_warmup=warmup, warmup_steps=warmup_steps,
                               named_parameters=net.module.named_parameters())
        net.register_comm_hook(state, ddp.gtopk_hook)
    else:
        raise SystemExit(f"--hook {args.hook!r}: choose allreduce, fp16, powersgd:RANK or gtopk")
    base = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum)
    return net, DdpOptimizer(base, state)


def test_accuracy(model: torch.nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, rank: int, size: int,
                  sum_over_ranks, average_buffers: bool, batch: int = 1000) -> float:
    """Accuracy on the whole test set: each rank evaluates its slice (eval mode, batches of
    ``batch``) and the correct counts are summed. ``average_buffers``: first average the
    floating-point buffers (batch norm's running statistics, which each rank's forward passes
    update on its own data) over the ranks, so every rank evaluates the same model; DDP
    broadcasts rank 0's buffers every forward instead."""
    if average_buffers:
        with torch.no_grad():
            for buf in model.buffers():
                if buf.is_floating_point():
                    buf.copy_(sum_over_ranks(buf) / size)
    lo, hi = len(y_test) * rank // size, len(y_test) * (rank + 1) // size
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(lo, hi, batch):
            j = min(hi, i + batch)
            correct += int((model(x_test[i:j]).argmax(-1) == y_test[i:j]).sum())
    model.train(was_training)
    return float(sum_over_ranks(torch.tensor(correct, dtype=torch.float64))) / len(y_test)


def main() -> int:
    args = parse_args()
    if args.plot_from:
        if not args.plot:
            raise SystemExit("--plot-from needs --plot OUT.png")
        plot_runs(args.plot_from, args.plot)
        print(f"wrote {args.plot}")
        return 0

    import gtopk_mpi
    import gtopk_mpi.torch as hvd

    import models  # scripts/experiments/models.py

    if args.hierarchical is not None:
        os.environ["GTOPK_HIERARCHICAL"] = args.hierarchical
    if args.ddp:
        import torch.distributed as dist

        from gtopk_mpi.torch import ddp

        if "LOCAL_RANK" in os.environ:  # torchrun: no MPI at all
            dist.init_process_group("gloo")
        else:  # mpirun: torch.distributed from MPI's environment, the gTop-k hook's exchanges through MPI
            ddp.init_process_group_from_mpi("gloo")
            gtopk_mpi.init()
        rank, size = dist.get_rank(), dist.get_world_size()

        def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
            t = t.clone()
            dist.all_reduce(t)
            return t
    else:
        hvd.init()
        rank, size = hvd.rank(), hvd.size()

        def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
            return hvd.allreduce(t, op=hvd.Sum)

    def mean_over_ranks(value: float) -> float:
        return float(sum_over_ranks(torch.tensor(value, dtype=torch.float64))) / size
    layout = gtopk_mpi.runtime.layout() if gtopk_mpi.is_initialized() else None
    if rank == 0 and not args.quiet:
        where = layout.describe() if layout is not None else "torch.distributed (gloo)"
        print(f"train.py: {size} ranks on {where}", file=sys.stderr, flush=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = models.build(args.model, args.data)
    lm = models.is_language_model(args.model)

    if args.data in ("digits", "fashion-mnist"):
        if args.data == "digits":
            if args.model not in ("mlp", "cnn"):
                raise SystemExit("--data digits needs --model mlp or cnn (8x8 images)")
            (x_train, y_train), (x_test, y_test) = digits_data(rank, size)
        else:
            (x_train, y_train), (x_test, y_test) = fashion_mnist_data(rank, size, args.data_dir)
        steps_per_epoch = max(1, len(y_train) // args.batch_size)
        if args.steps_per_epoch is not None:
            steps_per_epoch = min(steps_per_epoch, args.steps_per_epoch)
    else:
        shape = models.input_shape(args.model, args.data)
        gen = torch.Generator().manual_seed(args.seed + rank)
        if lm:
            vocab = model.decoder.out_features
            x_train = torch.randint(0, vocab, (args.batch_size * 4, *shape), generator=gen)
            y_train = torch.randint(0, vocab, (args.batch_size * 4, *shape), generator=gen)
        else:
            x_train = torch.randn(args.batch_size * 4, *shape, generator=gen)
            y_train = torch.randint(0, 10, (args.batch_size * 4,), generator=gen)
        x_test = y_test = None
        steps_per_epoch = args.steps_per_epoch or 10

    warmup = None if args.density_warmup is None else [  # None: the library's default warm-up
        float(v) for v in args.density_warmup.split(",") if v.strip() and v.strip().lower() != "none"]
    warmup_steps = None if warmup is None else steps_per_epoch
    if args.ddp:
        algo = "ddp-" + args.hook.replace(":", "")
        # DDP broadcasts rank 0's parameters
        model, opt = ddp_optimizer(args, model, steps_per_epoch, warmup, warmup_steps)
    else:
        algo = args.algo
        compression = {"dense": hvd.Compression.none, "topk": hvd.Compression.topk(args.density, args.wire),
                       "gtopk": hvd.Compression.gtopk(args.density, args.values, args.wire)}[args.algo]
        correct = args.momentum_correction and args.algo != "dense"
        base = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.0 if correct else args.momentum)
        opt = hvd.DistributedOptimizer(base, named_parameters=model.named_parameters(), compression=compression,
                                       density_warmup=warmup, density_warmup_steps=warmup_steps,
                                       momentum_correction=args.momentum if correct else 0.0)
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    compressing = algo in ("topk", "gtopk", "ddp-gtopk")

    def loss_of(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if lm:
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))
        return F.cross_entropy(out, target)

    writer = None
    if rank == 0 and args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        csv_file = open(args.csv, "w", newline="")
        writer = csv.DictWriter(csv_file, fieldnames=CSV_FIELDS)
        writer.writeheader()
    bar = tqdm(total=args.epochs * steps_per_epoch, disable=rank != 0 or args.quiet, file=sys.stderr,
               desc=f"{algo} P={size}", leave=False)
    compute_alone = 0.0
    if args.ddp:  # forward + backward without DDP's reduction (no_sync), for the time split: the median
        samples = []  # of 10 after 2 warm-ups (3 samples swung from 44 to 134 ms with 4 ranks on 2 cores)
        for _ in range(12):
            t0 = time.perf_counter()
            with model.no_sync():
                loss_of(model(x_train[: args.batch_size]), y_train[: args.batch_size]).backward()
            samples.append(time.perf_counter() - t0)
        opt.zero_grad()
        compute_alone = float(np.median(samples[2:]))
    step = 0
    for epoch in range(args.epochs):
        lr = args.lr
        if epoch < args.lr_warmup_epochs:  # from lr/P up to lr, linearly (Goyal et al.)
            lr = args.lr / size + (args.lr - args.lr / size) * epoch / args.lr_warmup_epochs
        for group in opt.param_groups:
            group["lr"] = lr
        perm = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        density = opt.current_density() if compressing else 1.0  # the density of this epoch's steps
        compute = other = 0.0
        losses = []
        opt.timings(reset=True)
        sent = read_counter(args.nic)
        t_epoch = time.perf_counter()
        for i in range(steps_per_epoch):
            idx = perm[(i * args.batch_size) % len(perm):][: args.batch_size]
            if len(idx) < args.batch_size:
                idx = perm[: args.batch_size]
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = loss_of(model(x_train[idx]), y_train[idx])
            loss.backward()
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            compute += t1 - t0
            other += t2 - t1
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
        epoch_s = time.perf_counter() - t_epoch
        sent = read_counter(args.nic) - sent
        timings = opt.timings(reset=True)
        if args.ddp:  # the hook works inside backward: what backward took beyond compute alone is its cost
            waited = max(0.0, compute - steps_per_epoch * compute_alone)
            compute -= waited
            timings["communication"] = max(0.0, waited - timings["compression"])
        else:
            other = max(0.0, other - timings["compression"] - timings["communication"])
        mean_loss = mean_over_ranks(float(np.mean(losses)))
        port_kb = mean_over_ranks(sent / steps_per_epoch / 1e3) if args.nic else ""
        acc = float("nan")
        if x_test is not None:
            acc = test_accuracy(model, x_test, y_test, rank, size, sum_over_ranks, average_buffers=not args.ddp)
        wire = (opt.state.wire if opt.state is not None else "") if args.ddp else (
            compression.wire if args.algo != "dense" else "")
        row = {"algo": algo, "values": args.values, "wire": wire,
               "layout": "" if layout is None else
               f"{layout.hosts}x{max(layout.ranks_per_host)} {'hier' if layout.hierarchical else 'flat'}",
               "model": args.model, "data": args.data, "ranks": size,
               "epoch": epoch + 1, "steps": step, "density": density, "lr": lr, "loss": mean_loss,
               "test_acc": acc, "samples_per_s_per_rank": steps_per_epoch * args.batch_size / epoch_s,
               "compute_s": compute, "compression_s": timings["compression"],
               "communication_s": timings["communication"], "other_s": other, "epoch_s": epoch_s,
               "port_kb_per_step": port_kb}
        if rank == 0:
            if writer is not None:
                writer.writerow(row)
                csv_file.flush()
            if not args.quiet:
                bar.write(f"epoch {epoch + 1:3d}  loss {mean_loss:.4f}  acc {acc:.4f}  "
                          f"{row['samples_per_s_per_rank']:.1f} samples/s/rank  compute {compute:.2f}s  "
                          f"compression {timings['compression']:.2f}s  communication {timings['communication']:.2f}s")
    bar.close()
    if args.ddp:
        if gtopk_mpi.is_initialized():
            gtopk_mpi.shutdown()
        dist.barrier()  # gloo aborts a rank that destroys the group while its peer still sends (1 run in ~7 here)
        dist.destroy_process_group()
    else:
        hvd.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

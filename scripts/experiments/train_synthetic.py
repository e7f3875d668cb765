"""Synthetic training benchmark in the style of Horovod's pytorch_synthetic_benchmark.py.

    mpiexec -n 4 .venv/bin/python scripts/experiments/train_synthetic.py --model resnet20 \\
        --compression gtopk --density 0.001

Trains on a fixed random batch (no data loading) and prints images (or sequences)
per second per rank and in total; rank 0 shows a progress bar. Compute is CPU here.
"""

from __future__ import annotations

import argparse
import sys
import timeit

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import gtopk_mpi.torch as hvd

import models  # scripts/experiments/models.py


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="resnet20", choices=sorted(models.BUILDERS))
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--num-warmup-batches", type=int, default=2)
    p.add_argument("--num-batches-per-iter", type=int, default=5)
    p.add_argument("--num-iters", type=int, default=5)
    p.add_argument("--compression", choices=("none", "fp16", "topk", "gtopk"), default="none")
    p.add_argument("--density", type=float, default=0.001, help="for topk/gtopk")
    p.add_argument("--values", choices=("merged", "exact"), default="merged", help="for gtopk")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per rank")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    hvd.init()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = models.build(args.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01 * hvd.size())
    compression = {"none": hvd.Compression.none, "fp16": hvd.Compression.fp16,
                   "topk": hvd.Compression.topk(args.density),
                   "gtopk": hvd.Compression.gtopk(args.density, args.values)}[args.compression]
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                         compression=compression)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    shape = models.input_shape(args.model)
    if models.is_language_model(args.model):
        vocab = model.decoder.out_features
        data = torch.randint(0, vocab, (args.batch_size, *shape))
        target = torch.randint(0, vocab, (args.batch_size, *shape))

        def loss_fn(out: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(out.reshape(-1, vocab), target.reshape(-1))
    else:
        data = torch.randn(args.batch_size, *shape)
        target = torch.randint(0, 10, (args.batch_size,))

        def loss_fn(out: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(out, target)

    def step() -> None:
        optimizer.zero_grad()
        loss_fn(model(data)).backward()
        optimizer.step()

    log = print if hvd.rank() == 0 else (lambda *a, **k: None)
    params = sum(p.numel() for p in model.parameters())
    log(f"Model: {args.model} ({params:,} parameters)  Batch size: {args.batch_size}  Ranks: {hvd.size()}  "
        f"Compression: {compression.describe() if hasattr(compression, 'describe') else args.compression}")
    timeit.timeit(step, number=args.num_warmup_batches)
    rates = []
    bar = tqdm(total=args.num_iters, desc="benchmark", disable=hvd.rank() != 0, file=sys.stderr, leave=False)
    for it in range(args.num_iters):
        t = timeit.timeit(step, number=args.num_batches_per_iter)
        rates.append(args.batch_size * args.num_batches_per_iter / t)
        bar.update(1)
        log(f"Iter #{it}: {rates[-1]:.1f} img/sec per rank")
    bar.close()
    mean, conf = float(np.mean(rates)), 1.96 * float(np.std(rates))
    log(f"Img/sec per rank: {mean:.1f} +-{conf:.1f}")
    log(f"Total img/sec on {hvd.size()} rank(s): {hvd.size() * mean:.1f} +-{hvd.size() * conf:.1f}")
    hvd.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

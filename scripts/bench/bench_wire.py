"""Bytes per entry of the wire formats on real selections, in one run.

    .venv/bin/python scripts/bench/bench_wire.py [--steps 3]

For each gradient source - i.i.d. normal data of ResNet-50's size (25,557,032), and the
flattened gradients of VGG-16 and ResNet-20 (scripts/experiments/models.py) on random CIFAR-shaped
batches, after ``--steps`` steps of error feedback (residual + gradient, as training
selects) - and densities 0.001 and 0.01: the bytes one message of the k selected entries
takes per entry (56-byte header included) with each wire format, and how many bytes of
that are the packed indices.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from gtopk_mpi import _C, select_topk_ef

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import models  # noqa: E402  # scripts/experiments/models.py

HEADER = 56
WIRES = {"raw": (0, 0), "fp32": (0, -1), "bf16": (1, -1), "fp16": (2, -1)}  # (value code, index packing)


def gradients(name: str, steps: int, seed: int = 0):
    """``steps`` flattened float32 gradients of a model (or normal vectors of ResNet-50's size)."""
    rng = np.random.default_rng(seed)
    if name == "normal (ResNet-50 size)":
        return [rng.standard_normal(25_557_032, dtype=np.float32) for _ in range(steps)]
    torch.manual_seed(seed)
    model = models.build(name)
    out = []
    for _ in range(steps):
        model.zero_grad()
        x = torch.randn(8, *models.input_shape(name))
        y = torch.randint(0, 10, (8,))
        torch.nn.functional.cross_entropy(model(x), y).backward()
        out.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy().copy())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="error-feedback steps before the measured selection")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'gradient':<26} {'density':>8} {'k':>8} " + " ".join(f"{w:>7}" for w in WIRES) + "   index B/entry")
    for name in ("normal (ResNet-50 size)", "vgg16", "resnet20"):
        grads = gradients(name, args.steps)
        for density in (0.001, 0.01):
            m = grads[0].size
            k = max(1, int(np.ceil(density * m)))
            residual = np.zeros(m, np.float32)
            for g in grads:  # error feedback: what a training step selects from
                idx, val = select_topk_ef(residual, g, k)
                residual[idx] = 0
            cells, index_bytes = [], 0
            for code, packing in WIRES.values():
                payload, ib, *_ = _C.encode_entries(idx, val, code, packing, False)
                cells.append((payload.nbytes + HEADER) / k)
                index_bytes = ib if packing else index_bytes
            print(f"{name:<26} {density:>8} {k:>8} " + " ".join(f"{c:7.2f}" for c in cells)
                  + f"   {index_bytes / k:13.2f}")


if __name__ == "__main__":
    main()

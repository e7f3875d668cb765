"""Hugging Face Accelerate with the gTop-k DDP hook, as its users register any hook that is
not one of Accelerate's built-in ones: ``accelerator.prepare(model)``, then
``model.register_comm_hook(state, gtopk_hook)``, the state built before Accelerate starts
the process group. Run under ``torchrun --nproc-per-node 2``; prints ``ACCELERATE OK {...}``
on rank 0 when the hook ran past its start_iter, both ranks end with identical parameters, and
MPI was never started."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from accelerate import Accelerator

from gtopk_mpi.torch.ddp import GTopkState, gtopk_hook


def main() -> int:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    state = GTopkState(density=0.05, start_iter=2, named_parameters=model.named_parameters())
    accelerator = Accelerator(cpu=True)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(128, 16, generator=gen), torch.randint(0, 4, (128,), generator=gen)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    model.register_comm_hook(state, gtopk_hook)
    for _ in range(3):
        for xb, yb in loader:
            opt.zero_grad()
            accelerator.backward(torch.nn.functional.cross_entropy(model(xb), yb))
            opt.step()
    from mpi4py import MPI  # after gtopk_mpi's import, as in a user's script: imported, never started

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    both = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(both, flat)
    ok = (all(torch.equal(both[0], b) for b in both) and state.iter > state.start_iter
          and bool(state.feedback.residuals) and not MPI.Is_initialized())
    if dist.get_rank() == 0:
        print("ACCELERATE OK" if ok else "ACCELERATE FAILED",
              json.dumps({"iters": state.iter, "start_iter": state.start_iter, "ranks": dist.get_world_size(),
                          "mpi_initialized": MPI.Is_initialized()}),
              flush=True)
    dist.barrier()
    accelerator.end_training()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

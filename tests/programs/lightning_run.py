"""A PyTorch Lightning Trainer with the gTop-k DDP hook, as a Lightning user writes it:
``DDPStrategy(ddp_comm_state=GTopkState(...), ddp_comm_hook=gtopk_hook)``, the state built
before Lightning starts the process group. Run under ``torchrun --nproc-per-node 2`` or
``mpiexec -n 2`` (Lightning's MPIEnvironment then starts the process group);
prints ``LIGHTNING OK {...}`` on rank 0 when the hook ran past its start_iter, both ranks
end with identical parameters, and (under torchrun) MPI was never started.

Lightning registers communication hooks only when its device is CUDA
(``DDPStrategy._register_ddp_hooks``; on CPU it ignores them without a word), so on this
CPU-only machine the strategy below makes the same registration call on CPU: Lightning's own
``_register_ddp_comm_hook``, the path a GPU user's strategy takes."""

from __future__ import annotations

import json
import os
import sys

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import _register_ddp_comm_hook
from lightning.pytorch.strategies import DDPStrategy

from gtopk_mpi.torch.ddp import GTopkState, gtopk_hook


class DDPStrategyOnCpu(DDPStrategy):
    def _register_ddp_hooks(self) -> None:
        _register_ddp_comm_hook(model=self.model, ddp_comm_state=self._ddp_comm_state,
                                ddp_comm_hook=self._ddp_comm_hook, ddp_comm_wrapper=self._ddp_comm_wrapper)


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def main() -> int:
    torch.manual_seed(0)
    model = Net()
    assert not dist.is_initialized()  # the state is built before Lightning starts torch.distributed
    state = GTopkState(density=0.05, start_iter=2, named_parameters=model.named_parameters())
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(128, 16, generator=gen), torch.randint(0, 4, (128,), generator=gen)
    data = torch.utils.data.TensorDataset(x, y)
    trainer = L.Trainer(strategy=DDPStrategyOnCpu(ddp_comm_state=state, ddp_comm_hook=gtopk_hook), accelerator="cpu",
                        devices=2, max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=8))
    from mpi4py import MPI  # after gtopk_mpi's import, as in a user's script: imported, never started

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    both = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(both, flat)
    same = all(torch.equal(both[0], b) for b in both)
    under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
    mpi_left_alone = not (under_torchrun and MPI.Is_initialized())
    ok = same and state.iter > state.start_iter and bool(state.feedback.residuals) and mpi_left_alone
    if dist.get_rank() == 0:
        print("LIGHTNING OK" if ok else "LIGHTNING FAILED",
              json.dumps({"iters": state.iter, "start_iter": state.start_iter,
                          "residuals": len(state.feedback.residuals),
                          "mpi_initialized": MPI.Is_initialized(),
                          "steps": trainer.global_step}), flush=True)
    dist.barrier()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

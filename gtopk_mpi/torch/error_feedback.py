"""ErrorFeedback: the state that sparse gradient reduction depends on, in the style of
PyTorch's PowerSGDState.

Algorithm. A sparse reduction (gTop-k or Top-k) of a flat gradient g sends only the
entries the collective carries. Error feedback keeps the rest: each reduction works on
residual + g (the addition fused into the selection pass) and leaves in the residual
exactly what this rank's contribution did not carry, so, summed over ranks and steps,
no gradient mass is lost; it is only delayed. DGC's momentum correction (Lin et al.,
ICLR 2018) accumulates a local velocity u = momentum * u + g and feeds u instead of g;
u is cleared where values were sent (momentum masking).

State (one entry per key, e.g. a bucket of DistributedOptimizer): ``residuals[key]``
(one gradient of memory), ``velocities[key]`` (with momentum correction), and ``step``,
the optimizer steps taken, which drives the density schedule. All of it survives a
checkpoint through ``state_dict()`` / ``load_state_dict()``: a restart that dropped the
residuals would silently drop every rank's unsent gradient mass. Residuals are per rank:
each rank saves and loads its own.

Knobs: ``density`` (rho; k per reduction by gtopk_mpi.torch.density.training_k: ceil(rho *
m), at least GTOPK_MIN_K entries, dense where those would outweigh the dense values),
``density_warmup`` (densities of the first steps, each for ``density_warmup_steps`` steps;
None: the library's default, the paper's [0.25, 0.0625, 0.0156, 0.004] for 100 steps each,
GTOPK_DENSITY_WARMUP[_STEPS]; [] for none), ``momentum`` (0: plain error feedback; use it
with an optimizer whose own momentum is 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import density as schedule


class ErrorFeedback:
    def __init__(self, density: float, density_warmup: Sequence[float] | None = None,
                 density_warmup_steps: int | None = None, momentum: float = 0.0):
        if not 0.0 < float(density) <= 1.0:
            raise ValueError(f"densities must be in (0, 1], got {density!r}")
        self.density = float(density)
        self.density_warmup, self.density_warmup_steps = schedule.resolve_warmup(density_warmup,
                                                                                 density_warmup_steps)
        self.momentum = float(momentum)
        self.step = 0
        self.residuals: dict[str, torch.Tensor] = {}
        self.velocities: dict[str, torch.Tensor] = {}

    def current_density(self) -> float:
        """The density of this step: the warm-up schedule, then ``density``."""
        return schedule.scheduled(self.density, self.density_warmup, self.density_warmup_steps, self.step)

    def residual(self, key: str, like: torch.Tensor) -> torch.Tensor:
        """The residual of ``key`` (zeros the first time), shaped and placed like ``like``."""
        return self._tensor(self.residuals, key, like)

    def compensate(self, key: str, g: torch.Tensor) -> torch.Tensor:
        """What to feed the reduction for gradient g: g, or with momentum correction the
        velocity u = momentum * u + g (updated in place and returned)."""
        if not self.momentum:
            return g
        u = self._tensor(self.velocities, key, g)
        return u.mul_(self.momentum).add_(g)

    def sent(self, key: str, carried: Any = None) -> None:
        """After a reduction: clear the velocity where values were sent (``carried`` indices;
        None: everything was sent, and the residual is cleared too)."""
        if carried is None and key in self.residuals:
            self.residuals[key].zero_()
        velocity = self.velocities.get(key)
        if velocity is not None:
            if carried is None:
                velocity.zero_()
            else:
                velocity[torch.as_tensor(carried, device=velocity.device, dtype=torch.int64)] = 0

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "residuals": dict(self.residuals), "velocities": dict(self.velocities)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.residuals = {k: v.clone() for k, v in state["residuals"].items()}
        self.velocities = {k: v.clone() for k, v in state["velocities"].items()}

    @staticmethod
    def _tensor(table: dict[str, torch.Tensor], key: str, like: torch.Tensor) -> torch.Tensor:
        t = table.get(key)
        if t is None:
            t = table[key] = torch.zeros_like(like)
        elif t.shape != like.shape or t.dtype != like.dtype:
            raise ValueError(f"error-feedback state of {key!r} is {t.dtype}{list(t.shape)}, but the gradient is "
                             f"{like.dtype}{list(like.shape)} (a checkpoint of a different model?)")
        elif t.device != like.device:
            t = table[key] = t.to(like.device)
        return t

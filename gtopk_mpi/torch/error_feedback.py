"""ErrorFeedback: the state that sparse gradient reduction depends on, in the style of
PyTorch's PowerSGDState.

Algorithm. A sparse reduction (gTop-k or Top-k) of a flat gradient g sends only the
entries the collective carries. Error feedback keeps the rest: each reduction works on
residual + g (the addition fused into the selection pass) and leaves in the residual
exactly what this rank's contribution did not carry, so, summed over ranks and steps,
no gradient mass is lost; it is only delayed. DGC's momentum correction (Lin et al.,
ICLR 2018) accumulates a local velocity u = momentum * u + g and feeds u instead of g;
u is cleared where values were sent (momentum masking).

State, per parameter name: ``residuals`` (one gradient of memory), ``velocities`` (with
momentum correction), and ``step``, the steps taken, which drives the density schedule. A
reduction names the parameters its flat vector concatenates (a :data:`Layout`: (name,
numel) in order: a DistributedOptimizer bucket, a DDP bucket); the state keeps one flat
tensor per layout and, when the layout changes (other buckets: GTOPK_FUSION_THRESHOLD,
DDP's rebuilt buckets, a checkpoint loaded into another layout), moves each parameter's
piece to wherever that parameter now is. All of it survives a checkpoint through
``state_dict()`` / ``load_state_dict()`` (per parameter name, so a checkpoint loads under
any bucket layout): a restart that dropped the residuals would silently drop every rank's
unsent gradient mass. Residuals are per rank: each rank saves and loads its own. One
class serves both front ends: DistributedOptimizer and the DDP hook (GTopkState).

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

Layout = tuple[tuple[str, int], ...]  # (parameter name, numel) of each piece of a flat vector, in order
KINDS = ("residuals", "velocities")


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
        self.residuals: dict[Layout, torch.Tensor] = {}
        self.velocities: dict[Layout, torch.Tensor] = {}
        self.pending: dict[str, dict[str, torch.Tensor]] = {kind: {} for kind in KINDS}  # per name, not yet placed

    def current_density(self) -> float:
        """The density of this step: the warm-up schedule, then ``density``."""
        return self.density_at(self.step)

    def density_at(self, step: int) -> float:
        """The density of step ``step`` (0: the first step the schedule counts)."""
        return schedule.scheduled(self.density, self.density_warmup, self.density_warmup_steps, step)

    def residual(self, layout: Layout, like: torch.Tensor) -> torch.Tensor:
        """The residual of the parameters of ``layout`` (zeros the first time), shaped and
        placed like ``like`` (their concatenation)."""
        return self._tensor("residuals", layout, like)

    def compensate(self, layout: Layout, g: torch.Tensor) -> torch.Tensor:
        """What to feed the reduction for gradient g: g, or with momentum correction the
        velocity u = momentum * u + g (updated in place and returned)."""
        if not self.momentum:
            return g
        return self._tensor("velocities", layout, g).mul_(self.momentum).add_(g)

    def sent(self, layout: Layout, carried: Any = None) -> None:
        """After a reduction: clear the velocity where values were sent (``carried`` indices;
        None: everything was sent, and the residual is cleared too)."""
        if carried is None and layout in self.residuals:
            self.residuals[layout].zero_()
        velocity = self.velocities.get(layout)
        if velocity is not None:
            if carried is None:
                velocity.zero_()
            else:
                velocity[torch.as_tensor(carried, device=velocity.device, dtype=torch.int64)] = 0

    def place(self, layout: Layout, like: torch.Tensor) -> None:
        """Lay the residuals (and velocities, with momentum) of ``layout`` out now, as
        ``like``, instead of at the first reduction that names them."""
        self._tensor("residuals", layout, like)
        if self.momentum:
            self._tensor("velocities", layout, like)

    def per_parameter(self, kind: str = "residuals") -> dict[str, torch.Tensor]:
        """This rank's ``kind`` (residuals or velocities) per parameter name: flat CPU copies."""
        out = {name: t.detach().cpu().clone() for name, t in self.pending[kind].items()}
        for layout, flat in getattr(self, kind).items():
            for name, piece in _pieces(layout, flat):
                out[name] = piece.detach().cpu().clone()
        return out

    def state_dict(self) -> dict[str, Any]:
        """The step and every parameter's residual and velocity, by name (CPU tensors)."""
        return {"step": self.step, **{kind: self.per_parameter(kind) for kind in KINDS}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() saved on this rank; each parameter's pieces are placed
        when a reduction next names it, in whatever layout it then has."""
        self.step = int(state["step"])
        for kind in KINDS:
            getattr(self, kind).clear()
            self.pending[kind] = {n: t.detach().reshape(-1).clone() for n, t in state.get(kind, {}).items()}

    def _tensor(self, kind: str, layout: Layout, like: torch.Tensor) -> torch.Tensor:
        table: dict[Layout, torch.Tensor] = getattr(self, kind)
        t = table.get(layout)
        if t is not None:
            if t.dtype != like.dtype:
                raise ValueError(f"error-feedback {kind} of {_shown(layout)} are {t.dtype}, but the gradient is "
                                 f"{like.dtype}")
            if t.device != like.device:
                t = table[layout] = t.to(like.device)
            return t
        if like.numel() != sum(n for _, n in layout):
            raise ValueError(f"error feedback: a flat vector of {like.numel()} entries for parameters of "
                             f"{sum(n for _, n in layout)} ({_shown(layout)})")
        wanted = {name for name, _ in layout}
        for old in [old for old in table if wanted & {name for name, _ in old}]:  # split layouts that overlap
            for name, piece in _pieces(old, table.pop(old)):
                self.pending[kind][name] = piece
        t = torch.zeros_like(like)
        at = 0
        for name, n in layout:
            if name in self.pending[kind]:
                piece = self.pending[kind].pop(name)
                if piece.numel() != n:
                    raise ValueError(f"error-feedback {kind} of {name!r} have {piece.numel()} entries, the "
                                     f"parameter {n} (a checkpoint of a different model?)")
                t[at : at + n] = piece.reshape(-1).to(t)
            at += n
        table[layout] = t
        return t


def _pieces(layout: Layout, flat: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    out, at = [], 0
    for name, n in layout:
        out.append((name, flat[at : at + n]))
        at += n
    return out


def _shown(layout: Layout) -> str:
    names = [name for name, _ in layout]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

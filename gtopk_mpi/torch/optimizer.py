"""DistributedOptimizer: Horovod's wrapper, with gTop-k S-SGD as an explicit option.

Algorithm. Gradients are fused into flat buckets (one per dtype for the whole
model by default, as in the paper; ``GTOPK_FUSION_THRESHOLD`` bytes, or
``groups``/``num_groups``, for smaller ones). A hook on each parameter's gradient
accumulation marks it ready; once every gradient of a bucket is ready (after
``backward_passes_per_step`` passes) the bucket is submitted to the background
engine, which matches buckets between ranks by name and reduces them while the
rest of the backward pass runs. ``step()`` waits for every bucket, writes the
averaged gradients back into ``p.grad`` and calls the wrapped optimizer.

With ``compression=Compression.gtopk(density, values)`` a bucket's reduction is the
butterfly gTop-k sparse allreduce with error feedback: the optimizer's
``error_feedback`` (an ErrorFeedback, the DDP hook's too) holds every parameter's residual:
what this rank has not yet sent, so no gradient mass is lost. ``Compression.topk(density)``
is the allgather Top-k baseline with the same residuals. Knobs:

* ``density_warmup`` - densities used for the first optimizer steps, each for
  ``density_warmup_steps`` steps, then the compression's density; by default (None) the
  paper's later schedule [0.25, 0.0625, 0.0156, 0.004], 100 steps each
  (GTOPK_DENSITY_WARMUP, GTOPK_DENSITY_WARMUP_STEPS); [] for none;
* k per bucket - ceil(density * bucket size), but at least ``GTOPK_MIN_K`` (6,055)
  entries, and a dense reduction where those would outweigh the dense values: fewer
  entries save almost no wire time on 1 GbE (gtopk_mpi.torch.density; logged once);
* ``momentum_correction`` - DGC momentum correction: the residual accumulates a
  local velocity u = mu * u + g instead of g, and u is masked where values were
  sent; use it with an optimizer whose own momentum is 0;
* environment ``GTOPK_DENSITY``: an unchanged Horovod script that builds
  ``DistributedOptimizer(...)`` without a compression gets Compression.gtopk of
  that density, with the same defaults (warm-up, k floor).

Checkpoints: ``state_dict()`` carries this rank's error-feedback state (residuals,
velocities, the step of the density schedule) next to the wrapped optimizer's, tagged
with the rank, per parameter name; each rank saves and loads its own (``load_state_dict``
refuses another rank's residuals rather than double or drop gradient mass, and a parameter
it does not have), under any bucket layout (GTOPK_FUSION_THRESHOLD, groups). broadcast_optimizer_state
leaves every rank's own error-feedback state in place.

Without any of these everything is dense and exact, as in Horovod.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import config
from ..transport import EngineTransport
from . import requests
from .compression import Compression, SparseCompressor, description
from .density import min_k
from .engine import Work, submit
from .error_feedback import KINDS, ErrorFeedback, Layout
from .mpi_ops import rank, size, sparse_allreduce_async
from .process_sets import global_process_set, registered
from .reduction import OP_NAMES, Adasum, Average, Sum, reduce_flat

ERROR_FEEDBACK_KEY = "gtopk_error_feedback"


@dataclass
class _Bucket:
    name: str
    params: list[tuple[str, torch.nn.Parameter]]
    numel: int
    ready: set[int] = field(default_factory=set)     # ids of params whose gradient is ready
    work: Work | None = None

    @property
    def layout(self) -> Layout:
        """The parameters its flat gradient concatenates: the error feedback's key."""
        return tuple((n, p.numel()) for n, p in self.params)


class _DistributedOptimizer(torch.optim.Optimizer):
    def __init__(self, params, named_parameters, compression, backward_passes_per_step, op,
                 gradient_predivide_factor, num_groups, groups, sparse_as_dense, process_set,
                 density_warmup, density_warmup_steps, momentum_correction) -> None:
        super(self.__class__, self).__init__(params)  # type: ignore[call-arg]  # the wrapped class's own
        self._set_id, members = registered(process_set)
        self._included = rank() in members  # Horovod: a rank outside the set steps on its own gradients
        self._process_set = process_set
        self._sparse_as_dense = bool(sparse_as_dense)
        self._sparse: dict[int, Any] = {}  # id(p) -> the pending sparse_allreduce_async of a sparse gradient
        self._compression = compression
        self._bpps = int(backward_passes_per_step)
        if self._bpps < 1:
            raise ValueError("backward_passes_per_step must be >= 1")
        self._op = op
        # Horovod: an Average split into prescale 1/f and postscale f around the sum
        self._prescale, self._postscale = 1.0 / gradient_predivide_factor, gradient_predivide_factor
        self.error_feedback: ErrorFeedback | None = None
        if isinstance(compression, SparseCompressor):
            self.error_feedback = ErrorFeedback(compression.density, density_warmup, density_warmup_steps,
                                                momentum_correction)
            if momentum_correction and any(g.get("momentum", 0) for g in self.param_groups):
                warnings.warn("momentum_correction applies momentum before compression; set the wrapped "
                              "optimizer's momentum to 0", stacklevel=3)
        self._timings = {"compression": 0.0, "communication": 0.0}  # seconds, accumulated by the engine

        all_params = [p for g in self.param_groups for p in g["params"]]
        if named_parameters is not None:
            named = list(named_parameters)
            if any(not isinstance(pair, tuple) for pair in named):
                raise ValueError("named_parameters should be a sequence of tuples (name, parameter), "
                                 "usually produced by model.named_parameters().")
            names = [n for n, _ in named]
            if len(names) != len(set(names)):
                dups = sorted({n for n in names if names.count(n) > 1})
                raise ValueError(f"Parameter names in named_parameters must be unique. Found duplicates: {dups}")
            known = {id(p) for _, p in named}
            missing = [i for i, p in enumerate(all_params) if id(p) not in known]
            if missing:
                raise ValueError("named_parameters was specified, but one or more model parameters were not "
                                 "named. Python object ids: " + ", ".join(str(id(all_params[i])) for i in missing))
            by_id = {id(p): n for n, p in named}
        else:  # Horovod's names: group i, parameter j
            by_id = {id(p): f"allreduce.noname.{i}.{j}" for i, g in enumerate(self.param_groups)
                     for j, p in enumerate(g["params"])}
        self._parameter_names = {p: by_id[id(p)] for p in all_params}  # Horovod's attribute: parameter -> name
        self._param_name = by_id
        # registration order, reversed: roughly the order backward produces gradients
        ordered = [(by_id[id(p)], p) for p in reversed(all_params) if p.requires_grad]
        self._buckets = self._make_buckets(ordered, num_groups, groups)
        self._bucket_of = {id(p): b for b in self._buckets for _, p in b.params}
        self._counts = {id(p): 0 for _, p in ordered}
        self._synchronized = False
        self._should_synchronize = True
        self._hooks = [p.register_post_accumulate_grad_hook(self._hook) for _, p in ordered] if self._included else []

    # -- buckets --------------------------------------------------------------------
    def _make_buckets(self, ordered, num_groups, groups) -> list[_Bucket]:
        if groups is not None:
            ids = {id(p): (n, p) for n, p in ordered}
            chunks = [[ids[id(p)] for p in grp if id(p) in ids] for grp in groups]
            grouped = {id(p) for grp in chunks for _, p in grp}
            chunks += [[(n, p)] for n, p in ordered if id(p) not in grouped]
        elif num_groups:
            per = max(1, math.ceil(len(ordered) / num_groups))
            chunks = [ordered[i : i + per] for i in range(0, len(ordered), per)]
        else:
            threshold = config.FUSION_THRESHOLD.get()
            cur: list[tuple[str, Any]] = []
            chunks, cur_bytes = [], 0
            for n, p in ordered:
                nbytes = p.numel() * p.element_size()
                if cur and (cur_bytes + nbytes > threshold or p.dtype != cur[0][1].dtype):
                    chunks.append(cur)
                    cur, cur_bytes = [], 0
                cur.append((n, p))
                cur_bytes += nbytes
            if cur:
                chunks.append(cur)
        # one dtype per bucket
        split: list[list[tuple[str, Any]]] = []
        for chunk in chunks:
            by_dtype: dict[torch.dtype, list] = {}
            for n, p in chunk:
                by_dtype.setdefault(p.dtype, []).append((n, p))
            split.extend(by_dtype.values())
        return [_Bucket(f"gtopk.bucket.{i:05d}", c, sum(p.numel() for _, p in c)) for i, c in enumerate(split) if c]

    def current_density(self) -> float:
        """The density the next submitted buckets use (warm-up schedule, then the compression's)."""
        ef = self.error_feedback
        return ef.current_density() if ef is not None else 1.0

    def _hook(self, p: torch.Tensor) -> None:
        bucket = self._bucket_of[id(p)]
        if bucket.work is not None:
            raise AssertionError("Gradients were computed more than backward_passes_per_step times before call "
                                 "to step(). Increase backward_passes_per_step to accumulate gradients locally.")
        self._counts[id(p)] += 1
        if self._counts[id(p)] == self._bpps:
            if p.grad is not None and p.grad.is_sparse and not self._sparse_as_dense:
                # Horovod: a sparse gradient is reduced as sparse (allgather of indices and values)
                self._sparse[id(p)] = sparse_allreduce_async(p.grad.detach(), f"{self._param_name[id(p)]}.sparse",
                                                             self._op, self._process_set)
            bucket.ready.add(id(p))
            if len(bucket.ready) == len(bucket.params):
                self._submit(bucket)

    def _flat_grad(self, bucket: _Bucket) -> torch.Tensor:
        parts = []
        for _, p in bucket.params:
            g = p.grad
            if g is None or id(p) in self._sparse:  # sparse gradients travel on their own
                g = torch.zeros_like(p)
            elif g.is_sparse:
                g = g.to_dense()
            parts.append(g.detach().reshape(-1))
        return torch.cat(parts) if len(parts) > 1 else parts[0].clone()

    def _submit(self, bucket: _Bucket) -> None:
        flat = self._flat_grad(bucket)
        comp, ef = self._compression, self.error_feedback
        feedback = (ef, bucket.layout) if ef is not None else None

        def run(link: EngineTransport, reqs: list[requests.Request]) -> torch.Tensor:
            y, stats = reduce_flat(link, flat, self._op, comp, self._prescale, self._postscale, feedback)
            self._timings["compression"] += stats.select_s + stats.merge_s
            self._timings["communication"] += stats.comm_s
            return y

        described = description(comp.with_density(ef.current_density()) if ef else comp)
        req = requests.allreduce(bucket.name, flat, OP_NAMES[self._op], self._prescale, self._postscale, described,
                                 process_set=self._set_id)
        bucket.work = submit(Work(req, run))

    # -- Horovod's optimizer API ------------------------------------------------------
    def synchronize(self) -> None:
        """Wait for every bucket's reduction and write the results into p.grad."""
        if not self._included:  # not in the process set: this rank's own gradients stay
            self._synchronized = True
            return
        for bucket in self._buckets:
            if bucket.work is None:
                for _, p in bucket.params:  # hooks that did not fire: zero gradients
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                self._submit(bucket)
        try:
            for bucket in self._buckets:
                assert bucket.work is not None  # every bucket was submitted above
                y = bucket.work.wait()
                offset = 0
                with torch.no_grad():
                    for _, p in bucket.params:
                        n = p.numel()
                        if id(p) in self._sparse:
                            p.grad = self._sparse.pop(id(p))()
                        elif p.grad is not None and p.grad.is_sparse:  # sparse_as_dense: sparse again after
                            p.grad = y[offset : offset + n].view_as(p).to_sparse()
                        else:
                            if p.grad is None or p.grad.is_sparse:
                                p.grad = torch.zeros_like(p)
                            p.grad.copy_(y[offset : offset + n].view_as(p))
                        offset += n
        finally:
            self._sparse.clear()
            for bucket in self._buckets:
                bucket.work = None
                bucket.ready.clear()
            for key in self._counts:
                self._counts[key] = 0
        if self.error_feedback is not None:
            self.error_feedback.step += 1
        self._synchronized = True

    @contextmanager
    def skip_synchronize(self):
        """Use inside: optimizer.synchronize(); clip gradients; with optimizer.skip_synchronize(): step()."""
        self._should_synchronize = False
        try:
            yield
        finally:
            self._should_synchronize = True

    def step(self, closure=None):
        if self._should_synchronize:
            if self._synchronized:
                warnings.warn("optimizer.step() called without optimizer.skip_synchronize() context after "
                              "optimizer.synchronize(). This can cause training slowdown. You may want to consider "
                              "using optimizer.skip_synchronize() context if you use optimizer.synchronize() in "
                              "your code.", stacklevel=2)
            self.synchronize()
        self._synchronized = False
        return super(self.__class__, self).step(closure)

    def zero_grad(self, set_to_none: bool = True):
        if any(b.work is not None for b in self._buckets):
            raise AssertionError("optimizer.zero_grad() was called after loss.backward() but before "
                                 "optimizer.step() or optimizer.synchronize(). This is prohibited as it can cause "
                                 "a race condition.")
        return super(self.__class__, self).zero_grad(set_to_none)

    def timings(self, reset: bool = True) -> dict[str, float]:
        """Seconds spent by this rank's engine since the last reset: "compression" (top-k
        selection with the residual pass, merges) and "communication" (inside MPI)."""
        out = dict(self._timings)
        if reset:
            for key in self._timings:
                self._timings[key] = 0.0
        return out

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict, plus (sparse compression) this rank's
        error-feedback state under ERROR_FEEDBACK_KEY (per parameter name), tagged with the rank."""
        state = super(self.__class__, self).state_dict()
        if self.error_feedback is not None:
            state[ERROR_FEEDBACK_KEY] = {"rank": rank(), "size": size(), **self.error_feedback.state_dict()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict() of this rank (the error-feedback state must be this rank's own,
        saved by the same number of ranks, of parameters this optimizer has, else ValueError;
        any bucket layout)."""
        state = dict(state_dict)
        feedback = state.pop(ERROR_FEEDBACK_KEY, None)
        if feedback is not None and self.error_feedback is not None:
            where = (feedback["rank"], feedback["size"])
            if where != (rank(), size()):
                raise ValueError(f"this checkpoint holds the error-feedback state (residuals) of rank {where[0]} of "
                                 f"{where[1]}; this is rank {rank()} of {size()}. Each rank must load its own "
                                 f"optimizer.state_dict(), or drop the '{ERROR_FEEDBACK_KEY}' entry to start "
                                 "with empty residuals (losing the gradient mass they held).")
            sizes = {n: p.numel() for b in self._buckets for n, p in b.params}
            for kind in KINDS:
                for name, t in feedback.get(kind, {}).items():
                    if sizes.get(name) != t.numel():
                        raise ValueError(f"the checkpoint's error-feedback state holds {kind} for {name!r} "
                                         f"({t.numel()} entries), which this optimizer "
                                         + (f"has with {sizes[name]}" if name in sizes else "does not have")
                                         + " (a checkpoint of another model, or other named_parameters?)")
            self.error_feedback.load_state_dict(feedback)
        super(self.__class__, self).load_state_dict(state)


def is_distributed(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` is a DistributedOptimizer (a dynamic subclass made below)."""
    return type(optimizer).__dict__.get("synchronize") is _DistributedOptimizer.synchronize


def DistributedOptimizer(optimizer: torch.optim.Optimizer, named_parameters=None, compression=Compression.none,
                         backward_passes_per_step: int = 1, op: int = Average,
                         gradient_predivide_factor: float = 1.0, num_groups: int = 0, groups=None,
                         sparse_as_dense: bool = False, process_set=global_process_set,
                         density_warmup: list[float] | None = None, density_warmup_steps: int | None = None,
                         momentum_correction: float = 0.0):
    """Wrap ``optimizer`` so that step() applies gradients reduced over all ranks.

    Returns an instance of a dynamic subclass of the optimizer's class (Horovod's
    contract). See the module docstring for gTop-k options.
    """
    if op == Adasum:
        raise NotImplementedError("Adasum is not supported by gtopk_mpi")
    if gradient_predivide_factor != 1.0 and op != Average:
        raise ValueError("gradient_predivide_factor not supported with op != Average")
    if compression is Compression.none and config.DENSITY.get() is not None:
        compression = Compression.gtopk(config.DENSITY.get())
    if isinstance(compression, SparseCompressor) and compression.min_k is None:
        compression = dataclasses.replace(compression, min_k=min_k())
    if isinstance(compression, SparseCompressor) and op not in (Average, Sum):
        raise ValueError("sparse compression supports only op=Average or op=Sum")
    cls = type(optimizer.__class__.__name__, (optimizer.__class__,), dict(_DistributedOptimizer.__dict__))
    return cls(optimizer.param_groups, named_parameters, compression, backward_passes_per_step, op,
               gradient_predivide_factor, num_groups, groups, sparse_as_dense, process_set, density_warmup,
               density_warmup_steps, momentum_correction)


__all__ = ["DistributedOptimizer"]

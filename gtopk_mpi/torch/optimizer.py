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
butterfly gTop-k sparse allreduce with error feedback: state is one residual per
bucket (keyed by its parameters' names) holding everything this rank has not yet
sent, so no gradient mass is lost. ``Compression.topk(density)`` is the allgather
Top-k baseline with the same residuals. Knobs:

* ``density_warmup`` - densities used for the first optimizer steps, each for
  ``density_warmup_steps`` steps (e.g. [0.25, 0.0625, 0.0156, 0.004] then the
  compression's density, as in the paper's later version);
* ``momentum_correction`` - DGC momentum correction: the residual accumulates a
  local velocity u = mu * u + g instead of g, and u is masked where values were
  sent; use it with an optimizer whose own momentum is 0;
* environment ``GTOPK_DENSITY``: an unchanged Horovod script that builds
  ``DistributedOptimizer(...)`` without a compression gets Compression.gtopk of
  that density.

Without any of these everything is dense and exact, as in Horovod.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from mpi4py import MPI

from ..selection import resolve_k
from .compression import Compression, SparseCompressor
from .engine import Request, Work
from .mpi_ops import (
    _DTYPE_NAMES,
    _OP_NAMES,
    Adasum,
    Average,
    Sum,
    _eng,
    _mpi_reduce,
    global_process_set,
)


@dataclass
class _Bucket:
    name: str
    params: list[tuple[str, torch.nn.Parameter]]
    numel: int
    ready: set[int] = field(default_factory=set)     # ids of params whose gradient is ready
    work: Work | None = None
    residual: torch.Tensor | None = None             # error feedback (sparse compression)
    velocity: torch.Tensor | None = None             # momentum correction state


def _fusion_threshold() -> float:
    value = os.environ.get("GTOPK_FUSION_THRESHOLD")
    return math.inf if not value else float(value)


class _DistributedOptimizer(torch.optim.Optimizer):
    def __init__(self, params, named_parameters, compression, backward_passes_per_step, op,
                 gradient_predivide_factor, num_groups, groups, sparse_as_dense, process_set,
                 density_warmup, density_warmup_steps, momentum_correction):
        super(self.__class__, self).__init__(params)
        process_set._check()
        self._compression = compression
        self._sparse = isinstance(compression, SparseCompressor)
        self._bpps = int(backward_passes_per_step)
        if self._bpps < 1:
            raise ValueError("backward_passes_per_step must be >= 1")
        self._op = op
        self._sparse_as_dense = sparse_as_dense
        if op == Average and gradient_predivide_factor != 1.0:
            # Horovod: prescale 1/f, postscale f/size, summed
            self._prescale, self._postscale = 1.0 / gradient_predivide_factor, gradient_predivide_factor
            self._reduce, self._divide = Sum, True
        else:
            self._prescale, self._postscale, self._reduce, self._divide = 1.0, 1.0, op, False
        self._warmup = list(density_warmup or [])
        self._warmup_steps = int(density_warmup_steps)
        self._momentum = float(momentum_correction)
        if self._momentum and any(g.get("momentum", 0) for g in self.param_groups):
            warnings.warn("momentum_correction applies momentum before compression; set the wrapped "
                          "optimizer's momentum to 0", stacklevel=3)
        self._steps = 0
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
        else:
            by_id = {id(p): f"allreduce.noname.{i}" for i, p in enumerate(all_params)}
        # registration order, reversed: roughly the order backward produces gradients
        ordered = [(by_id[id(p)], p) for p in reversed(all_params) if p.requires_grad]
        self._buckets = self._make_buckets(ordered, num_groups, groups)
        self._bucket_of = {id(p): b for b in self._buckets for _, p in b.params}
        self._counts = {id(p): 0 for _, p in ordered}
        self._synchronized = False
        self._should_synchronize = True
        self._hooks = [p.register_post_accumulate_grad_hook(self._hook) for _, p in ordered]

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
            threshold = _fusion_threshold()
            chunks, cur, cur_bytes = [], [], 0
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
        split = []
        for chunk in chunks:
            by_dtype: dict[torch.dtype, list] = {}
            for n, p in chunk:
                by_dtype.setdefault(p.dtype, []).append((n, p))
            split.extend(by_dtype.values())
        return [_Bucket(f"gtopk.bucket.{i:05d}", c, sum(p.numel() for _, p in c)) for i, c in enumerate(split) if c]

    def current_density(self) -> float:
        """The density the next submitted buckets use (warm-up schedule, then the compression's)."""
        stage = self._steps // max(1, self._warmup_steps)
        return self._warmup[stage] if stage < len(self._warmup) else self._compression.density

    def _hook(self, p: torch.Tensor) -> None:
        bucket = self._bucket_of[id(p)]
        if bucket.work is not None:
            raise AssertionError("Gradients were computed more than backward_passes_per_step times before call "
                                 "to step(). Increase backward_passes_per_step to accumulate gradients locally.")
        self._counts[id(p)] += 1
        if self._counts[id(p)] == self._bpps:
            bucket.ready.add(id(p))
            if len(bucket.ready) == len(bucket.params):
                self._submit(bucket)

    def _flat_grad(self, bucket: _Bucket) -> torch.Tensor:
        parts = []
        for _, p in bucket.params:
            g = p.grad
            if g is None:
                g = torch.zeros_like(p)
            elif g.is_sparse:
                g = g.to_dense()
            parts.append(g.detach().reshape(-1))
        return torch.cat(parts) if len(parts) > 1 else parts[0].clone()

    def _submit(self, bucket: _Bucket) -> None:
        flat = self._flat_grad(bucket)
        comp = self._compression
        if self._sparse:
            comp = comp.with_density(self.current_density())
            if bucket.residual is None:
                bucket.residual = torch.zeros_like(flat)
            if self._momentum and bucket.velocity is None:
                bucket.velocity = torch.zeros_like(flat)
        run = self._sparse_run(bucket, flat, comp) if self._sparse else self._dense_run(flat)
        describe = comp.describe() if (self._sparse or comp is not Compression.none) else "none"
        req = Request(bucket.name, "ALLREDUCE", _DTYPE_NAMES.get(flat.dtype, str(flat.dtype)), (bucket.numel,),
                      _OP_NAMES[self._reduce], self._prescale, self._postscale, -1,
                      "GPU" if flat.is_cuda else "CPU", describe)
        bucket.work = _eng().submit(Work(req, run))

    def _finish(self, comm: MPI.Comm, y: torch.Tensor) -> torch.Tensor:
        if self._reduce == Average:
            y = y / comm.Get_size()
        if self._divide:
            y = y * (self._postscale / comm.Get_size())
        return y

    def _dense_run(self, flat: torch.Tensor):
        comp = self._compression

        def run(comm: MPI.Comm, reqs) -> torch.Tensor:
            x = flat * self._prescale if self._prescale != 1.0 else flat
            c, ctx = comp.compress(x)
            t0 = time.perf_counter()
            reduced = _mpi_reduce(comm, c.contiguous().cpu().numpy(), self._reduce)  # CUDA: through the host
            self._timings["communication"] += time.perf_counter() - t0
            y = comp.decompress(torch.from_numpy(reduced).to(flat.device), ctx)
            return self._finish(comm, y.to(flat.dtype))

        return run

    def _sparse_run(self, bucket: _Bucket, flat: torch.Tensor, comp: SparseCompressor):
        def run(comm: MPI.Comm, reqs) -> torch.Tensor:
            x = flat * self._prescale if self._prescale != 1.0 else flat
            m = x.numel()
            k = resolve_k(m, None, comp.density)
            if k >= m:  # density 1: exactly the dense reduction (bit-identical to Compression.none)
                total = bucket.residual + x if bool(bucket.residual.any()) else x
                t0 = time.perf_counter()
                out = torch.from_numpy(_mpi_reduce(comm, total.contiguous().cpu().numpy(), Sum)).to(x.device)
                self._timings["communication"] += time.perf_counter() - t0
                bucket.residual.zero_()
                if bucket.velocity is not None:
                    bucket.velocity.zero_()
                return self._finish(comm, out)
            if bucket.velocity is not None:  # DGC momentum correction: accumulate velocity
                bucket.velocity.mul_(self._momentum).add_(x)
                x = bucket.velocity
            if x.is_cuda:  # selection and residual on the GPU; only the k pairs cross PCIe
                res = comp.allreduce(x, k, bucket.residual, comm)
                dense = res.to_dense()
            else:
                res = comp.allreduce(x.contiguous().numpy(), k, bucket.residual.numpy(), comm)
                dense = torch.from_numpy(res.to_dense())
            self._timings["compression"] += res.stats.select_s + res.stats.merge_s
            self._timings["communication"] += res.stats.comm_s
            if bucket.velocity is not None:  # momentum masking where values were sent
                bucket.velocity[torch.as_tensor(res.carried, device=x.device, dtype=torch.int64)] = 0
            return self._finish(comm, dense)

        return run

    # -- Horovod's optimizer API ------------------------------------------------------
    def synchronize(self) -> None:
        """Wait for every bucket's reduction and write the results into p.grad."""
        for bucket in self._buckets:
            if bucket.work is None:
                for _, p in bucket.params:  # hooks that did not fire: zero gradients
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                self._submit(bucket)
        try:
            for bucket in self._buckets:
                y = bucket.work.wait()
                offset = 0
                with torch.no_grad():
                    for _, p in bucket.params:
                        n = p.numel()
                        if p.grad is None or p.grad.is_sparse:
                            p.grad = torch.zeros_like(p)
                        p.grad.copy_(y[offset : offset + n].view_as(p))
                        offset += n
        finally:
            for bucket in self._buckets:
                bucket.work = None
                bucket.ready.clear()
            for key in self._counts:
                self._counts[key] = 0
        self._steps += 1
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

    def residual_state(self) -> dict[tuple[str, ...], torch.Tensor]:
        """Error-feedback residuals, keyed by the names of each bucket's parameters."""
        return {tuple(n for n, _ in b.params): b.residual for b in self._buckets if b.residual is not None}


def DistributedOptimizer(optimizer: torch.optim.Optimizer, named_parameters=None, compression=Compression.none,
                         backward_passes_per_step: int = 1, op: int = Average,
                         gradient_predivide_factor: float = 1.0, num_groups: int = 0, groups=None,
                         sparse_as_dense: bool = False, process_set=global_process_set,
                         density_warmup: list[float] | None = None, density_warmup_steps: int = 1,
                         momentum_correction: float = 0.0):
    """Wrap ``optimizer`` so that step() applies gradients reduced over all ranks.

    Returns an instance of a dynamic subclass of the optimizer's class (Horovod's
    contract). See the module docstring for gTop-k options.
    """
    if op == Adasum:
        raise NotImplementedError("Adasum is not supported by gtopk_mpi")
    if gradient_predivide_factor != 1.0 and op != Average:
        raise ValueError("gradient_predivide_factor not supported with op != Average")
    if compression is Compression.none and os.environ.get("GTOPK_DENSITY"):
        compression = Compression.gtopk(float(os.environ["GTOPK_DENSITY"]))
    if isinstance(compression, SparseCompressor) and op not in (Average, Sum):
        raise ValueError("sparse compression supports only op=Average or op=Sum")
    for d in density_warmup or []:
        if not 0.0 < float(d) <= 1.0:
            raise ValueError(f"density_warmup entries must be in (0, 1], got {d!r}")
    cls = type(optimizer.__class__.__name__, (optimizer.__class__,), dict(_DistributedOptimizer.__dict__))
    return cls(optimizer.param_groups, named_parameters, compression, backward_passes_per_step, op,
               gradient_predivide_factor, num_groups, groups, sparse_as_dense, process_set, density_warmup,
               density_warmup_steps, momentum_correction)


__all__ = ["DistributedOptimizer"]

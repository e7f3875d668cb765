"""gTop-k as a PyTorch DDP communication hook.

Register it like PyTorch's PowerSGD hook::

    state = GTopkState(density=0.001, named_parameters=model.named_parameters())
    ddp_model.register_comm_hook(state, gtopk_hook)

Algorithm. DDP hands the hook its gradient buckets; for each it expects a Future holding
the bucket's gradient averaged over the ranks. For the first ``start_iter`` iterations the
hook is plain allreduce (DDP rebuilds its buckets after iteration 0, and the first steps
of training are the most sensitive to compressed gradients). Afterwards every rank adds
its gradient to its residual (error feedback), and the ranks agree on one global set of
the k = density * m largest-magnitude entries with gTop-k's butterfly (gtopk_mpi's
``gtopk_allreduce``: log2(P) exchanges of k (index, value) pairs, every rank ending with
the same sparse sum); the bucket's new gradient is that sparse sum / P, zero elsewhere, and
what a rank's entries did not carry stays in its residual. With ``whole_model`` (the
default) the hook holds the buckets' futures until the iteration's last bucket and runs
one exchange over the whole gradient (the global top-k of the model, as the paper and the
Horovod-style optimizer of gtopk_mpi.torch select); otherwise one exchange per bucket with
k = density * bucket size. Exchanges run on the hook's own worker thread (point-to-point
ops have no Futures in torch.distributed), which completes the Futures.

State (all of it per rank): the residuals, one float vector per bucket or for the whole
model, in an ErrorFeedback (``feedback``: the DistributedOptimizer's class), kept per
parameter name so that ``state_dict()`` / ``load_state_dict()`` carry them through a
checkpoint regardless of how DDP lays out its buckets; the iteration count.

Knobs. ``density`` (rho, 0.001 by default) and ``density_warmup`` (a list of densities,
``warmup_steps`` iterations each, right after ``start_iter``; by default the library's, the
paper's 0.25, 0.0625, 0.0156, 0.004 for 100 iterations each, GTOPK_DENSITY_WARMUP[_STEPS];
[] for none); ``min_k`` (at least this many entries an exchange, dense where they would
outweigh the values: gtopk_mpi.torch.density; default GTOPK_MIN_K, 6,055); ``start_iter``
(>= 2, iterations of plain allreduce first);
``values`` ("merged": the butterfly's partial sums; "exact": one more allreduce of the k
agreed entries' exact sums); ``wire`` (the message format, GTOPK_WIRE: "bf16" by default;
see gtopk_mpi.wire); ``whole_model``; ``hierarchical`` (the schedule when ranks share
hosts, see gtopk_mpi.butterfly). ``transport``: where the exchanges run: by default the
library's MPI communicator when gtopk_mpi is initialized (jobs under mpirun), else a gloo
group of its own over torch.distributed (torchrun, no MPI needed); or any Transport.

The state touches neither torch.distributed nor MPI until the hook's first call, so it can
be built before ``init_process_group`` (PyTorch Lightning's ``DDPStrategy(ddp_comm_state=...,
ddp_comm_hook=gtopk_hook)``, Hugging Face Accelerate's prepared model). Every rank must
register the hook with the same knobs. Errors (bad input, ranks that
disagree) come back from every rank's Future, so ``backward()`` raises on every rank.
(No ``from __future__ import annotations`` here: DDP checks the hook's annotations as objects.)
"""

import concurrent.futures
import os
import socket
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from mpi4py import MPI
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from .. import config, runtime
from ..butterfly import gtopk_allreduce
from ..transport import Transport
from . import density as schedule
from . import reduction
from .dist_transport import DistTransport
from .error_feedback import ErrorFeedback


class GTopkState:
    """What :func:`gtopk_hook` keeps between iterations (see the module docstring)."""

    def __init__(self, process_group: Any = None, density: float = 0.001, start_iter: int = 10,
                 values: str = "merged", wire: str | None = None, whole_model: bool = True,
                 density_warmup: Iterable[float] | None = None, warmup_steps: int | None = None,
                 named_parameters: Iterable[tuple[str, torch.nn.Parameter]] | None = None,
                 hierarchical: bool | str | None = None, transport: Transport | None = None, min_k: int | None = None):
        if start_iter < 2:
            raise ValueError(f"start_iter must be >= 2 (DDP rebuilds its buckets after iteration 0), got {start_iter}")
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density!r}")
        self.process_group = process_group
        self.density, self.start_iter, self.values = density, start_iter, values
        self.wire = wire or config.WIRE.get()
        self.whole_model, self.hierarchical = whole_model, hierarchical
        self.min_k = schedule.min_k() if min_k is None else int(min_k)
        self.names = {id(p): n for n, p in named_parameters} if named_parameters is not None else {}
        self._transport = transport  # None: bound by bind() on the hook's first call
        self.iter = 0
        # the residuals, per parameter, and the warm-up schedule: the optimizer's class
        self.feedback = ErrorFeedback(density, None if density_warmup is None else list(density_warmup), warmup_steps)
        self.held: list[tuple] = []                          # whole_model: this iteration's buckets so far
        self.stats: list[Any] = []                           # CommStats of the last iteration's exchanges
        self._fresh = True                                   # the next bucket starts an iteration
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gtopk-ddp")
        self._lock = threading.Lock()

    def bind(self) -> Transport:
        """The transport of the exchanges, chosen on first use (so a state can be built before
        ``init_process_group``, as Lightning's DDPStrategy and Accelerate do): the library's MPI
        communicator when gtopk_mpi is initialized, else a gloo group of the hook's own beside
        DDP's (``dist.new_group``: every rank creates it at its first hook call, the same point of
        the same backward)."""
        if self._transport is None:
            if not runtime.is_initialized() and not dist.is_initialized():
                raise RuntimeError("GTopkState: neither gtopk_mpi nor torch.distributed is initialized; the DDP "
                                   "hook runs after init_process_group (or gtopk_mpi.init())")
            self._transport = runtime.transport() if runtime.is_initialized() else DistTransport(
                dist.new_group(backend="gloo"))
        return self._transport

    @property
    def transport(self) -> Transport:
        """Where the exchanges run (see :meth:`bind`)."""
        return self.bind()

    def current_density(self) -> float:
        """The density of the current iteration (after start_iter: the warm-up, then density)."""
        return self.feedback.density_at(self.iter - self.start_iter)

    # -- residuals, per parameter name ------------------------------------------------
    def _names(self, bucket: "dist.GradBucket") -> list[str]:
        """The bucket's parameter names (without named_parameters: names valid in this process only)."""
        return [self.names.get(id(p)) or f"<parameter {id(p):#x}>" for p in bucket.parameters()]

    def _residual(self, names: list[str], sizes: list[int], like: torch.Tensor) -> torch.Tensor:
        """The residual of these parameters, laid out as ``like`` (their concatenation). A new
        layout (DDP rebuilt its buckets, or a checkpoint was loaded) takes each parameter's
        piece from wherever it was kept (ErrorFeedback)."""
        return self.feedback.residual(tuple(zip(names, sizes)), like)

    def state_dict(self) -> dict[str, Any]:
        """This rank's iteration count and residuals (per parameter name, CPU tensors)."""
        return {"iter": self.iter, "residuals": self.feedback.per_parameter("residuals")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() saved on this rank; residuals are placed when their
        parameters' bucket is next reduced."""
        self.iter = int(state["iter"])
        self.feedback.load_state_dict({"step": 0, "residuals": state["residuals"]})

    # -- the exchange -----------------------------------------------------------------
    def _exchange(self, parts: list[tuple[torch.Tensor, list[str], torch.futures.Future]], sizes: list[list[int]],
                  density: float) -> None:
        """On the worker: one gTop-k over the concatenated buffers, averaged, written back into
        them; then every part's Future gets its buffer (or the error)."""
        try:
            names = [n for _, ns, _ in parts for n in ns]
            flat_sizes = [n for s in sizes for n in s]
            buffers = [b for b, _, _ in parts]
            flat = buffers[0] if len(buffers) == 1 else torch.cat(buffers)
            if flat.dtype == torch.bfloat16:  # selection, sums and the residual in float32 (see reduction.py)
                flat = flat.float()
            residual = self._residual(names, flat_sizes, flat)
            k = schedule.training_k(flat.numel(), density, flat.element_size(), self.min_k)
            if k >= flat.numel():  # dense: the sum of every rank's residual + gradient, residuals emptied
                total = reduction.dense(self.transport, flat + residual) / self.transport.size
                residual.zero_()
                self._finish(parts, buffers, total)
                return
            x, r = reduction.array_of(flat)[1], reduction.array_of(residual)[1]
            res = gtopk_allreduce(x, k=k, average=True, residual=r, values=self.values,
                                  comm=self.transport, wire=self.wire, hierarchical=self.hierarchical)
            idx = torch.as_tensor(res.indices, device=flat.device).long()
            vals = torch.as_tensor(res.values, device=flat.device)
            at = 0
            for buf in buffers:  # each bucket's slice of the sparse average, zero elsewhere
                n = buf.numel()
                buf.zero_()
                lo, hi = np.searchsorted(res.indices if isinstance(res.indices, np.ndarray)
                                         else res.indices.cpu().numpy(), [at, at + n])
                buf[idx[lo:hi] - at] = vals[lo:hi].to(buf.dtype)
                at += n
            with self._lock:
                self.stats.append(res.stats)
            for buf, _, fut in parts:
                fut.set_result(buf)
        except Exception as e:  # the same error on every rank (agreement.py); DDP raises it in backward
            for _, _, fut in parts:
                fut.set_exception(e)

    def _finish(self, parts: list[tuple[torch.Tensor, list[str], torch.futures.Future]],
                buffers: list[torch.Tensor], total: torch.Tensor) -> None:
        """A dense exchange's end: each bucket gets its slice of ``total``."""
        at = 0
        for buf in buffers:
            buf.copy_(total[at : at + buf.numel()])
            at += buf.numel()
        for buf, _, fut in parts:
            fut.set_result(buf)

    def _next_bucket(self, bucket: "dist.GradBucket") -> None:
        """Iteration bookkeeping: stats restart with an iteration, which ends at its last bucket."""
        if self._fresh:
            with self._lock:
                self.stats = []
        self._fresh = bucket.is_last()


def gtopk_hook(state: GTopkState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: gTop-k sparse allreduce with error feedback (see the module
    docstring). Register with ``ddp_model.register_comm_hook(state, gtopk_hook)``."""
    state.bind()  # on the autograd thread, at the same bucket on every rank
    if state.iter < state.start_iter:
        if bucket.is_last():
            state.iter += 1
        return allreduce_hook(state.process_group, bucket)
    state._next_bucket(bucket)
    buf = bucket.buffer()
    names = state._names(bucket)
    sizes = [p.numel() for p in bucket.parameters()]
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    density = state.current_density()
    if not state.whole_model:
        state._worker.submit(state._exchange, [(buf, names, fut)], [sizes], density)
    else:
        state.held.append((bucket.index(), buf, names, sizes, fut))
        if bucket.is_last():
            held = sorted(state.held, key=lambda h: h[0])
            state.held = []
            state._worker.submit(state._exchange, [(b, n, f) for _, b, n, _, f in held], [s for *_, s, _ in held],
                                 density)
    if bucket.is_last():
        state.iter += 1
    return fut


def init_process_group_from_mpi(backend: str = "gloo", **kwargs: Any) -> None:
    """torch.distributed for a job launched by mpirun: rank and world size from
    MPI.COMM_WORLD, the rendezvous at $MASTER_ADDR:$MASTER_PORT (defaults: rank 0's host
    name, 29500). Then ``gtopk_mpi.init()`` lets the hook exchange through MPI."""
    runtime.start_mpi()
    world = MPI.COMM_WORLD
    addr = world.bcast(os.environ.get("MASTER_ADDR") or socket.gethostname(), root=0)
    port = world.bcast(os.environ.get("MASTER_PORT") or "29500", root=0)
    dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=world.Get_rank(),
                            world_size=world.Get_size(), **kwargs)

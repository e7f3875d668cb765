"""horovod.torch's collective operations, over the gtopk_mpi engine.

Semantics follow Horovod 0.28: allreduce averages by default; the result is
postscale * reduce(prescale * x) (Average divides the sum by the size); supported
dtypes are int32, int64, float16, float32 and float64; tensors must be contiguous;
ops are matched between ranks by name; async ops return integer handles for
poll()/synchronize(). A SparseCompressor (Compression.gtopk / Compression.topk)
turns allreduce into the sparse collective and returns a dense tensor with at most
k nonzeros (Sum or Average only).
"""

from __future__ import annotations

import itertools
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from mpi4py import MPI

from .. import _C, failures, runtime, transport
from . import engine
from .compression import Compression, SparseCompressor
from .engine import BROADCAST_DTYPES, DTYPE_NAMES, Request, Work, op_name, submit, submit_checked
from .reduction import OP_NAMES, Adasum, Average, Sum, reduce_flat


class ProcessSet:
    """Horovod's process set; only the global one (all ranks) is supported."""

    def __init__(self, ranks: Sequence[int] | None = None):
        self.ranks = None if ranks is None else list(ranks)

    def _check(self) -> None:
        if self is not global_process_set and self.ranks is not None and self.ranks != list(range(size())):
            raise NotImplementedError("gtopk_mpi.torch supports only the global process set")


global_process_set = ProcessSet()

# -------------------------------------------------------------------------------- runtime

_lock = threading.Lock()
_handles: dict[int, _Handle] = {}
_handle_ids = itertools.count(1)


def init(comm=None) -> None:
    """Start MPI and the engine (idempotent). comm: an mpi4py communicator or a list of world ranks."""
    with _lock:
        if engine.running():
            return
        runtime.init(comm)
        control, data = (transport.MpiTransport(runtime.comm().Dup()) for _ in range(2))
        data.topology()  # the hosts, found now (collective) rather than in the engine's first op
        engine.start(control, data)


def shutdown() -> None:
    """Collective: stop the engine on every rank and release the communicators."""
    with _lock:
        if not engine.running():
            return
        for link in engine.stop():
            if not failures.abandoned():
                link.close()
        _handles.clear()
        runtime.shutdown()


def is_initialized() -> bool:
    return engine.running()


def size() -> int:
    engine.current()
    return runtime.size()


def rank() -> int:
    engine.current()
    return runtime.rank()


def local_size() -> int:
    engine.current()
    return runtime.local_size()


def local_rank() -> int:
    engine.current()
    return runtime.local_rank()


def cross_size() -> int:
    """Number of ranks with this rank's local_rank (the hosts, when every host has as many ranks)."""
    engine.current()
    return runtime.cross_size()


def cross_rank() -> int:
    """Index of this rank among the ranks with its local_rank (its host's index)."""
    engine.current()
    return runtime.cross_rank()


def mpi_threads_supported() -> bool:
    return MPI.Query_thread() == MPI.THREAD_MULTIPLE


def mpi_built() -> bool:
    return True


def mpi_enabled() -> bool:
    return True


def gloo_built() -> bool:
    return False


def gloo_enabled() -> bool:
    return False


def nccl_built() -> int:
    return 0


def cuda_built() -> bool:
    return bool(getattr(_C, "has_cuda", False))


# -------------------------------------------------------------------------------- handles


class _Handle:
    def __init__(self, works: list[Work], finish: Callable[[list[object]], object]):
        self.works = works
        self.finish = finish


def _new_handle(works: list[Work], finish: Callable[[list[object]], object]) -> int:
    h = next(_handle_ids)
    _handles[h] = _Handle(works, finish)
    return h


def poll(handle: int) -> bool:
    """True once the op behind ``handle`` has completed (synchronize() will not block)."""
    if handle not in _handles:
        raise ValueError(f"Handle {handle} was not created or has been cleared.")
    return all(w.done.is_set() for w in _handles[handle].works)


def synchronize(handle: int):
    """Wait for an async op and return its output (raises its error on every rank)."""
    if handle not in _handles:
        raise ValueError(f"Handle {handle} was not created or has been cleared.")
    h = _handles.pop(handle)
    results = []
    error = None
    for w in h.works:
        try:
            results.append(w.wait())
        except BaseException as e:  # wait for every part, then raise the first error
            error = error or e
    if error is not None:
        raise error
    return h.finish(results)


# -------------------------------------------------------------------------------- checks


def _check_tensor(tensor: torch.Tensor, dtypes: dict) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"Expected a torch.Tensor, got {type(tensor).__name__}.")
    if tensor.dtype not in dtypes:
        raise ValueError(f"Tensor type {tensor.type()} is not supported.")
    if not tensor.is_contiguous():
        raise ValueError("Tensor is required to be contiguous.")


def _resolve_op(op: int | None, average: bool | None, fn: str) -> int:
    if op is not None and average is not None:
        raise ValueError("average and op are mutually exclusive")
    if average is not None:
        warnings.warn("Parameter `average` has been replaced with `op` and will be removed", DeprecationWarning,
                      stacklevel=3)
        return Average if average else Sum
    op = Average if op is None else op
    if op == Adasum:
        raise NotImplementedError("Adasum is not supported by gtopk_mpi")
    if op not in OP_NAMES:
        raise ValueError(f"Unknown reduction op {op!r}")
    return op


# -------------------------------------------------------------------------------- allreduce


def _allreduce_work(tensor: torch.Tensor, name: str, op: int, prescale: float, postscale: float,
                    compression, group: int = 0) -> Work:
    sparse = isinstance(compression, SparseCompressor)
    if sparse:
        if op not in (Sum, Average):
            raise ValueError("sparse compression supports only op=Sum or op=Average")
        if not tensor.dtype.is_floating_point:
            raise ValueError(f"Tensor type {tensor.type()} is not supported by sparse compression.")
    snapshot = tensor.detach().clone()  # the tensor may change before the op runs

    def run(link: Any, reqs: list[Request]) -> torch.Tensor:
        y, _ = reduce_flat(link, snapshot.reshape(-1), op, compression, prescale, postscale)
        return y.reshape(tensor.shape).to(dtype=tensor.dtype)

    req = Request(name, "ALLREDUCE", DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype)), tuple(tensor.shape),
                  OP_NAMES[op], float(prescale), float(postscale), -1, "GPU" if tensor.is_cuda else "CPU",
                  compression.describe() if sparse or compression is not Compression.none else "none", group=group)
    return Work(req, run)


def _submit_allreduces(fn: str, tensors: Sequence[torch.Tensor], name: str | None, grouped: bool,
                       average: bool | None, op: int | None, prescale: float, postscale: float,
                       process_set: ProcessSet, compression) -> list[Work]:
    """Check, then submit one named allreduce per tensor (grouped: ``{name}.{i}``)."""
    if grouped:
        base = op_name(name, "grouped_allreduce")
        names = [f"{base}.{i}" for i in range(len(tensors))]
    else:
        names = [op_name(name, "allreduce")]
    group = len(tensors) if grouped else 0

    def build() -> list[Work]:
        resolved = _resolve_op(op, average, fn)
        process_set._check()
        for t in tensors:
            _check_tensor(t, DTYPE_NAMES)
        return [_allreduce_work(t, n, resolved, prescale, postscale, compression, group)
                for t, n in zip(tensors, names)]

    return submit_checked("ALLREDUCE", names, build, group)


def _copy_into(tensors: Sequence[torch.Tensor]) -> Callable[[list[object]], list[torch.Tensor]]:
    """synchronize() of an in-place op: write each result into its tensor."""
    def finish(results: list[object]) -> list[torch.Tensor]:
        with torch.no_grad():
            for t, r in zip(tensors, results):
                t.copy_(r)
        return list(tensors)

    return finish


def allreduce_async(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
                    op: int | None = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                    process_set: ProcessSet = global_process_set, compression=Compression.none) -> int:
    """Start an allreduce of ``tensor`` (not modified); returns a handle for synchronize()."""
    works = _submit_allreduces("allreduce_async", [tensor], name, False, average, op, prescale_factor,
                               postscale_factor, process_set, compression)
    return _new_handle(works, lambda r: r[0])


def allreduce_async_(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
                     op: int | None = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                     process_set: ProcessSet = global_process_set, compression=Compression.none) -> int:
    """In-place allreduce_async: synchronize() writes the result into ``tensor`` and returns it."""
    works = _submit_allreduces("allreduce_async_", [tensor], name, False, average, op, prescale_factor,
                               postscale_factor, process_set, compression)
    finish = _copy_into([tensor])
    return _new_handle(works, lambda r: finish(r)[0])


class _AllreduceFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, name, average, op, prescale, postscale, process_set, compression):
        ctx.args = (op, prescale, postscale)
        return synchronize(allreduce_async(tensor, average, name, op, prescale, postscale, process_set, compression))

    @staticmethod
    def backward(ctx, grad):
        op, prescale, postscale = ctx.args
        return (allreduce(grad.contiguous(), op=op, prescale_factor=prescale, postscale_factor=postscale),
                None, None, None, None, None, None, None)


def allreduce(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
              compression=Compression.none, op: int | None = None, prescale_factor: float = 1.0,
              postscale_factor: float = 1.0, process_set: ProcessSet = global_process_set) -> torch.Tensor:
    """Reduce ``tensor`` over all ranks (default: average); differentiable. Returns a new tensor."""
    if isinstance(compression, SparseCompressor) or not isinstance(tensor, torch.Tensor):
        return synchronize(allreduce_async(tensor, average, name, op, prescale_factor, postscale_factor,
                                           process_set, compression))
    return _AllreduceFn.apply(tensor, name, average, op, prescale_factor, postscale_factor, process_set, compression)


def allreduce_(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
               op: int | None = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
               process_set: ProcessSet = global_process_set, compression=Compression.none) -> torch.Tensor:
    """In-place allreduce."""
    return synchronize(allreduce_async_(tensor, average, name, op, prescale_factor, postscale_factor,
                                        process_set, compression))


def grouped_allreduce_async(tensors: Sequence[torch.Tensor], average: bool | None = None, name: str | None = None,
                            op: int | None = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                            process_set: ProcessSet = global_process_set, compression=Compression.none) -> int:
    """Start allreduces of a list of tensors; synchronize() returns the list of results."""
    works = _submit_allreduces("grouped_allreduce_async", tensors, name, True, average, op, prescale_factor,
                               postscale_factor, process_set, compression)
    return _new_handle(works, list)


def grouped_allreduce_async_(tensors: Sequence[torch.Tensor], average: bool | None = None, name: str | None = None,
                             op: int | None = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                             process_set: ProcessSet = global_process_set, compression=Compression.none) -> int:
    """In-place grouped_allreduce_async."""
    works = _submit_allreduces("grouped_allreduce_async_", tensors, name, True, average, op, prescale_factor,
                               postscale_factor, process_set, compression)
    return _new_handle(works, _copy_into(tensors))


def grouped_allreduce(tensors: Sequence[torch.Tensor], average: bool | None = None, name: str | None = None,
                      compression=Compression.none, op: int | None = None, prescale_factor: float = 1.0,
                      postscale_factor: float = 1.0,
                      process_set: ProcessSet = global_process_set) -> list[torch.Tensor]:
    return synchronize(grouped_allreduce_async(tensors, average, name, op, prescale_factor, postscale_factor,
                                               process_set, compression))


def grouped_allreduce_(tensors: Sequence[torch.Tensor], average: bool | None = None, name: str | None = None,
                       op: int | None = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                       process_set: ProcessSet = global_process_set,
                       compression=Compression.none) -> list[torch.Tensor]:
    return synchronize(grouped_allreduce_async_(tensors, average, name, op, prescale_factor, postscale_factor,
                                                process_set, compression))


# -------------------------------------------------------------------------------- allgather


def _allgather_work(tensor: torch.Tensor, name: str) -> Work:
    snapshot = tensor.detach().to("cpu", copy=True)
    shape = tuple(tensor.shape)

    def run(link: Any, reqs: list[Request]) -> tuple[torch.Tensor, list[int]]:
        rows = [r.shape[0] for r in reqs]
        row = int(np.prod(shape[1:], dtype=np.int64))
        counts = [n * row for n in rows]
        out = np.empty(sum(counts), dtype=snapshot.numpy().dtype)
        link.allgatherv(snapshot.reshape(-1).numpy(), counts, out)
        return torch.from_numpy(out).reshape((sum(rows), *shape[1:])).to(tensor.device), rows

    req = Request(name, "ALLGATHER", BROADCAST_DTYPES.get(tensor.dtype, str(tensor.dtype)), shape,
                  device="GPU" if tensor.is_cuda else "CPU")
    return Work(req, run)


def allgather_async(tensor: torch.Tensor, name: str | None = None,
                    process_set: ProcessSet = global_process_set) -> int:
    """Start an allgather (concatenation along dim 0; first dims may differ between ranks)."""
    return _new_handle(_submit_allgather(tensor, name, process_set), lambda r: r[0][0])


def _submit_allgather(tensor: torch.Tensor, name: str | None, process_set: ProcessSet) -> list[Work]:
    names = [op_name(name, "allgather")]

    def build() -> list[Work]:
        process_set._check()
        _check_tensor(tensor, BROADCAST_DTYPES)
        return [_allgather_work(tensor, names[0])]

    return submit_checked("ALLGATHER", names, build)


class _AllgatherFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, name, process_set):
        out, rows = _submit_allgather(tensor, name, process_set)[0].wait()
        ctx.rows = rows
        return out

    @staticmethod
    def backward(ctx, grad):
        reduced = allreduce(grad.contiguous(), op=Sum)
        start = sum(ctx.rows[: rank()])
        return reduced.narrow(0, start, ctx.rows[rank()]), None, None


def allgather(tensor: torch.Tensor, name: str | None = None,
              process_set: ProcessSet = global_process_set) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0 (differentiable)."""
    if not isinstance(tensor, torch.Tensor):
        return synchronize(allgather_async(tensor, name, process_set))
    return _AllgatherFn.apply(tensor, name, process_set)


# -------------------------------------------------------------------------------- broadcast


def _broadcast_work(tensor: torch.Tensor, root_rank: int, name: str) -> Work:
    snapshot = tensor.detach().to("cpu", copy=True)

    def run(link: Any, reqs: list[Request]) -> torch.Tensor:
        if not 0 <= root_rank < link.size:
            raise ValueError(f"root_rank {root_rank} is out of range for size {link.size}")
        buf = snapshot.reshape(-1).numpy()
        link.bcast(buf.view(np.uint8) if buf.dtype == np.bool_ else buf, root_rank)
        return snapshot.to(tensor.device)

    req = Request(name, "BROADCAST", BROADCAST_DTYPES.get(tensor.dtype, str(tensor.dtype)), tuple(tensor.shape),
                  root=int(root_rank), device="GPU" if tensor.is_cuda else "CPU")
    return Work(req, run)


def _submit_broadcast(tensor: torch.Tensor, root_rank: int, name: str | None, process_set: ProcessSet
                      ) -> list[Work]:
    names = [op_name(name, "broadcast")]

    def build() -> list[Work]:
        process_set._check()
        _check_tensor(tensor, BROADCAST_DTYPES)
        return [_broadcast_work(tensor, root_rank, names[0])]

    return submit_checked("BROADCAST", names, build)


def broadcast_async(tensor: torch.Tensor, root_rank: int, name: str | None = None,
                    process_set: ProcessSet = global_process_set) -> int:
    return _new_handle(_submit_broadcast(tensor, root_rank, name, process_set), lambda r: r[0])


def broadcast_async_(tensor: torch.Tensor, root_rank: int, name: str | None = None,
                     process_set: ProcessSet = global_process_set) -> int:
    finish = _copy_into([tensor])
    return _new_handle(_submit_broadcast(tensor, root_rank, name, process_set), lambda r: finish(r)[0])


class _BroadcastFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, root_rank, name, process_set):
        ctx.root_rank = root_rank
        return synchronize(broadcast_async(tensor, root_rank, name, process_set))

    @staticmethod
    def backward(ctx, grad):
        reduced = allreduce(grad.contiguous(), op=Average)
        if rank() != ctx.root_rank:
            reduced = reduced * 0
        return reduced, None, None, None


def broadcast(tensor: torch.Tensor, root_rank: int, name: str | None = None,
              process_set: ProcessSet = global_process_set) -> torch.Tensor:
    """Return root_rank's tensor on every rank (differentiable)."""
    if not isinstance(tensor, torch.Tensor):
        return synchronize(broadcast_async(tensor, root_rank, name, process_set))
    return _BroadcastFn.apply(tensor, root_rank, name, process_set)


def broadcast_(tensor: torch.Tensor, root_rank: int, name: str | None = None,
               process_set: ProcessSet = global_process_set) -> torch.Tensor:
    """Overwrite ``tensor`` with root_rank's on every rank."""
    return synchronize(broadcast_async_(tensor, root_rank, name, process_set))


# -------------------------------------------------------------------------------- barrier, join


def barrier(process_set: ProcessSet = global_process_set) -> None:
    """Block until every rank has called barrier()."""
    names = [op_name(None, "barrier")]

    def build() -> list[Work]:
        process_set._check()
        return [Work(Request(names[0], "BARRIER"), lambda link, reqs: None)]

    submit_checked("BARRIER", names, build)[0].wait()


def join(device: int = -1) -> int:
    """Block until every rank has called join(); returns the rank that joined last.

    Unlike Horovod, ranks that have joined do not stand in (with zeros) for other
    ranks' collectives: every rank must still issue the same ops before joining.
    Arrival order is judged by each rank's wall clock.
    """
    req = Request(op_name(None, "join"), "JOIN", extra=time.time())
    return int(submit(Work(req, lambda link, reqs: int(np.argmax([r.extra for r in reqs])))).wait())


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

import numpy as np
import torch
from mpi4py import MPI

from .. import collectives, runtime
from ..selection import resolve_k
from .compression import Compression, SparseCompressor
from .engine import Engine, Request, Work

# Reduction ops (Horovod's values)
Average, Sum, Adasum, Min, Max, Product = 0, 1, 2, 3, 4, 5
_OP_NAMES = {Average: "AVERAGE", Sum: "SUM", Adasum: "ADASUM", Min: "MIN", Max: "MAX", Product: "PRODUCT"}
_MPI_OPS = {Sum: MPI.SUM, Average: MPI.SUM, Min: MPI.MIN, Max: MPI.MAX, Product: MPI.PROD}

_DTYPE_NAMES = {torch.int32: "HOROVOD_INT32", torch.int64: "HOROVOD_INT64", torch.float16: "HOROVOD_FLOAT16",
                torch.float32: "HOROVOD_FLOAT32", torch.float64: "HOROVOD_FLOAT64"}
_BROADCAST_DTYPES = {**_DTYPE_NAMES, torch.uint8: "HOROVOD_UINT8", torch.int8: "HOROVOD_INT8",
                     torch.int16: "HOROVOD_INT16", torch.bool: "HOROVOD_BOOL"}


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
_engine: Engine | None = None
_handles: dict[int, _Handle] = {}
_handle_ids = itertools.count(1)
_noname = itertools.count()


def init(comm=None) -> None:
    """Start MPI and the engine (idempotent). comm: an mpi4py communicator or a list of world ranks."""
    global _engine
    with _lock:
        if _engine is not None:
            return
        runtime.init(comm)
        _engine = Engine(runtime.comm().Dup())


def shutdown() -> None:
    """Collective: stop the engine on every rank and release the communicators."""
    global _engine
    with _lock:
        if _engine is None:
            return
        _engine.stop()
        _engine.comm.Free()
        _engine = None
        _handles.clear()
        runtime.shutdown()


def is_initialized() -> bool:
    return _engine is not None


def _eng() -> Engine:
    if _engine is None:
        raise ValueError("gtopk_mpi.torch has not been initialized; use hvd.init().")
    return _engine


def size() -> int:
    _eng()
    return runtime.size()


def rank() -> int:
    _eng()
    return runtime.rank()


def local_size() -> int:
    _eng()
    return runtime.local_size()


def local_rank() -> int:
    _eng()
    return runtime.local_rank()


def cross_size() -> int:
    """Number of hosts (ranks with the same local_rank)."""
    return _eng().comm.allreduce(1 if local_rank() == 0 else 0)


def cross_rank() -> int:
    """Index of this host among the hosts."""
    eng = _eng()
    split = eng.comm.Split(color=local_rank(), key=rank())
    r = split.Get_rank()
    split.Free()
    return r


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
    from .. import _C

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


def _name(name: str | None, kind: str) -> str:
    return name if name is not None else f"{kind}.noname.{next(_noname)}"


def _resolve_op(op: int | None, average: bool | None, fn: str) -> int:
    if op is not None and average is not None:
        raise ValueError(f"{fn}: average and op are mutually exclusive")
    if average is not None:
        warnings.warn("Parameter `average` has been replaced with `op` and will be removed", DeprecationWarning,
                      stacklevel=3)
        return Average if average else Sum
    op = Average if op is None else op
    if op == Adasum:
        raise NotImplementedError("Adasum is not supported by gtopk_mpi")
    if op not in _OP_NAMES:
        raise ValueError(f"Unknown reduction op {op!r}")
    return op


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().reshape(-1).numpy()


def _mpi_reduce(comm: MPI.Comm, arr: np.ndarray, op: int) -> np.ndarray:
    """Reduced copy of a 1-D array (Horovod op; float16 reduced in float32, rounded once)."""
    out = arr.copy()
    collectives.allreduce_inplace(comm, out, _MPI_OPS[op])
    return out


# -------------------------------------------------------------------------------- allreduce


def _scale(t: torch.Tensor, factor: float) -> torch.Tensor:
    if factor == 1.0:
        return t
    if t.dtype.is_floating_point:
        return t * factor
    return (t.double() * factor).to(t.dtype)


def _average(t: torch.Tensor, n: int) -> torch.Tensor:
    return t / n if t.dtype.is_floating_point else torch.div(t, n, rounding_mode="floor")


def _allreduce_work(tensor: torch.Tensor, name: str, op: int, prescale: float, postscale: float,
                    compression, residual: torch.Tensor | None = None) -> Work:
    sparse = isinstance(compression, SparseCompressor)
    if sparse:
        if op not in (Sum, Average):
            raise ValueError("sparse compression supports only op=Sum or op=Average")
        if not tensor.dtype.is_floating_point:
            raise ValueError(f"Tensor type {tensor.type()} is not supported by sparse compression.")
    shape = tuple(tensor.shape)
    device = tensor.device
    on_gpu = sparse and tensor.is_cuda  # sparse: select on the GPU; dense ops reduce a host copy
    snapshot = tensor.detach().clone() if on_gpu else tensor.detach().to("cpu", copy=True)

    def run(comm: MPI.Comm, reqs: list[Request]) -> torch.Tensor:
        x = _scale(snapshot, prescale)
        if on_gpu:  # the collectives take the GPU path for CUDA tensors
            flat = x.reshape(-1).contiguous()
            res = compression.allreduce(flat, resolve_k(flat.numel(), None, compression.density), residual, comm)
            y = res.to_dense().reshape(shape)
        elif sparse:
            flat = _numpy(x.contiguous())
            k = resolve_k(flat.size, None, compression.density)
            if k >= flat.size:  # density 1 (or a tiny tensor): exactly the dense result
                out = _mpi_reduce(comm, flat, Sum)
                if residual is not None:
                    residual.zero_()
            else:
                out = compression.allreduce(flat, k, None if residual is None else _numpy(residual), comm).to_dense()
            y = torch.from_numpy(out).reshape(shape)
        else:
            c, ctx = compression.compress(x)
            y = torch.from_numpy(_mpi_reduce(comm, _numpy(c.contiguous()), op)).reshape(shape)
            y = compression.decompress(y, ctx)
        if op == Average:
            y = _average(y, comm.Get_size())
        return _scale(y, postscale).to(device=device, dtype=tensor.dtype)

    req = Request(name, "ALLREDUCE", _DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype)), shape, _OP_NAMES[op],
                  float(prescale), float(postscale), -1, "GPU" if tensor.is_cuda else "CPU",
                  compression.describe() if sparse or compression is not Compression.none else "none")
    return Work(req, run)


def _submit_allreduces(fn: str, tensors: Sequence[torch.Tensor], name: str | None, grouped: bool,
                       average: bool | None, op: int | None, prescale: float, postscale: float,
                       process_set: ProcessSet, compression) -> list[Work]:
    """Validate, then submit one named allreduce per tensor (grouped: ``{name}.{i}``)."""
    op = _resolve_op(op, average, fn)
    process_set._check()
    for t in tensors:
        _check_tensor(t, _DTYPE_NAMES)
    if grouped:
        base = _name(name, "grouped_allreduce")
        names = [f"{base}.{i}" for i in range(len(tensors))]
    else:
        names = [_name(name, "allreduce")]
    return [_eng().submit(_allreduce_work(t, n, op, prescale, postscale, compression))
            for t, n in zip(tensors, names)]


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
    def forward(ctx, tensor, name, op, prescale, postscale, compression):
        ctx.args = (op, prescale, postscale)
        return synchronize(allreduce_async(tensor, name=name, op=op, prescale_factor=prescale,
                                           postscale_factor=postscale, compression=compression))

    @staticmethod
    def backward(ctx, grad):
        op, prescale, postscale = ctx.args
        return (allreduce(grad.contiguous(), op=op, prescale_factor=prescale, postscale_factor=postscale),
                None, None, None, None, None)


def allreduce(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
              compression=Compression.none, op: int | None = None, prescale_factor: float = 1.0,
              postscale_factor: float = 1.0, process_set: ProcessSet = global_process_set) -> torch.Tensor:
    """Reduce ``tensor`` over all ranks (default: average); differentiable. Returns a new tensor."""
    op = _resolve_op(op, average, "allreduce")
    process_set._check()
    if isinstance(compression, SparseCompressor):
        return synchronize(allreduce_async(tensor, name=name, op=op, prescale_factor=prescale_factor,
                                           postscale_factor=postscale_factor, compression=compression))
    return _AllreduceFn.apply(tensor, name, op, prescale_factor, postscale_factor, compression)


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

    def run(comm: MPI.Comm, reqs: list[Request]) -> tuple[torch.Tensor, list[int]]:
        rows = [r.shape[0] for r in reqs]
        row = int(np.prod(shape[1:], dtype=np.int64))
        counts = [n * row for n in rows]
        out = np.empty(sum(counts), dtype=snapshot.numpy().dtype)
        comm.Allgatherv(_numpy(snapshot), [out, counts])
        return torch.from_numpy(out).reshape((sum(rows), *shape[1:])).to(tensor.device), rows

    req = Request(name, "ALLGATHER", _BROADCAST_DTYPES.get(tensor.dtype, str(tensor.dtype)), shape,
                  device="GPU" if tensor.is_cuda else "CPU")
    return Work(req, run)


def allgather_async(tensor: torch.Tensor, name: str | None = None,
                    process_set: ProcessSet = global_process_set) -> int:
    """Start an allgather (concatenation along dim 0; first dims may differ between ranks)."""
    process_set._check()
    _check_tensor(tensor, _BROADCAST_DTYPES)
    work = _eng().submit(_allgather_work(tensor, _name(name, "allgather")))
    return _new_handle([work], lambda r: r[0][0])


class _AllgatherFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, name):
        work = _eng().submit(_allgather_work(tensor, _name(name, "allgather")))
        out, rows = work.wait()
        ctx.rows = rows
        return out

    @staticmethod
    def backward(ctx, grad):
        reduced = allreduce(grad.contiguous(), op=Sum)
        start = sum(ctx.rows[: rank()])
        return reduced.narrow(0, start, ctx.rows[rank()]), None


def allgather(tensor: torch.Tensor, name: str | None = None,
              process_set: ProcessSet = global_process_set) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0 (differentiable)."""
    process_set._check()
    _check_tensor(tensor, _BROADCAST_DTYPES)
    return _AllgatherFn.apply(tensor, name)


# -------------------------------------------------------------------------------- broadcast


def _broadcast_work(tensor: torch.Tensor, root_rank: int, name: str) -> Work:
    snapshot = tensor.detach().to("cpu", copy=True)

    def run(comm: MPI.Comm, reqs: list[Request]) -> torch.Tensor:
        if not 0 <= root_rank < comm.Get_size():
            raise ValueError(f"root_rank {root_rank} is out of range for size {comm.Get_size()}")
        buf = snapshot.reshape(-1).numpy()
        if buf.dtype == np.bool_:
            view = buf.view(np.uint8)
            comm.Bcast(view, root=root_rank)
        else:
            comm.Bcast(buf, root=root_rank)
        return snapshot.to(tensor.device)

    req = Request(name, "BROADCAST", _BROADCAST_DTYPES.get(tensor.dtype, str(tensor.dtype)), tuple(tensor.shape),
                  root=int(root_rank), device="GPU" if tensor.is_cuda else "CPU")
    return Work(req, run)


def broadcast_async(tensor: torch.Tensor, root_rank: int, name: str | None = None,
                    process_set: ProcessSet = global_process_set) -> int:
    process_set._check()
    _check_tensor(tensor, _BROADCAST_DTYPES)
    work = _eng().submit(_broadcast_work(tensor, root_rank, _name(name, "broadcast")))
    return _new_handle([work], lambda r: r[0])


def broadcast_async_(tensor: torch.Tensor, root_rank: int, name: str | None = None,
                     process_set: ProcessSet = global_process_set) -> int:
    process_set._check()
    _check_tensor(tensor, _BROADCAST_DTYPES)
    work = _eng().submit(_broadcast_work(tensor, root_rank, _name(name, "broadcast")))
    finish = _copy_into([tensor])
    return _new_handle([work], lambda r: finish(r)[0])


class _BroadcastFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, root_rank, name):
        ctx.root_rank = root_rank
        return synchronize(broadcast_async(tensor, root_rank, name))

    @staticmethod
    def backward(ctx, grad):
        reduced = allreduce(grad.contiguous(), op=Average)
        if rank() != ctx.root_rank:
            reduced = reduced * 0
        return reduced, None, None


def broadcast(tensor: torch.Tensor, root_rank: int, name: str | None = None,
              process_set: ProcessSet = global_process_set) -> torch.Tensor:
    """Return root_rank's tensor on every rank (differentiable)."""
    process_set._check()
    return _BroadcastFn.apply(tensor, root_rank, name)


def broadcast_(tensor: torch.Tensor, root_rank: int, name: str | None = None,
               process_set: ProcessSet = global_process_set) -> torch.Tensor:
    """Overwrite ``tensor`` with root_rank's on every rank."""
    return synchronize(broadcast_async_(tensor, root_rank, name, process_set))


# -------------------------------------------------------------------------------- barrier, join


def barrier(process_set: ProcessSet = global_process_set) -> None:
    """Block until every rank has called barrier()."""
    process_set._check()
    _eng().submit(Work(Request(_name(None, "barrier"), "BARRIER"), lambda comm, reqs: None)).wait()


def join(device: int = -1) -> int:
    """Block until every rank has called join(); returns the rank that joined last.

    Unlike Horovod, ranks that have joined do not stand in (with zeros) for other
    ranks' collectives: every rank must still issue the same ops before joining.
    Arrival order is judged by each rank's wall clock.
    """
    req = Request(_name(None, "join"), "JOIN", extra=time.time())
    return int(_eng().submit(Work(req, lambda comm, reqs: int(np.argmax([r.extra for r in reqs])))).wait())


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
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from mpi4py import MPI

from .. import _C, config, failures, runtime, transport
from . import engine, requests
from .compression import Compression, SparseCompressor, description
from .engine import Work, no_run, submit
from .process_sets import ProcessSet, global_process_set, members_of, root_index
from .reduction import OP_NAMES, Adasum, Average, Sum, average, from_host_bits, host_bits, reduce_flat, scale
from .requests import BROADCAST_DTYPES, DTYPE_NAMES, OpType, Request
from .submission import WorkOf, realign_unnamed, submit_checked, submit_op, unnamed_counts

# -------------------------------------------------------------------------------- runtime

_lock = threading.Lock()
_handles: dict[int, _Handle] = {}
_handle_ids = itertools.count(1)
_dynamic = False


def init(comm=None, process_sets: Sequence[ProcessSet] | str | None = None) -> None:
    """Start MPI and the engine (idempotent). comm: an mpi4py communicator or a list of world
    ranks. process_sets: ProcessSets to register now (every rank passes the same list), or
    "dynamic" to allow add_process_set / remove_process_set later."""
    global _dynamic
    with _lock:
        if engine.running():
            return
        if isinstance(process_sets, str):
            if process_sets.lower() != "dynamic":
                raise ValueError(f"process_sets must be a list of ProcessSet or 'dynamic', got {process_sets!r}")
            os.environ["HOROVOD_DYNAMIC_PROCESS_SETS"] = "1"
            process_sets = []
        process_sets = list(process_sets or [])
        for ps in process_sets:
            if not isinstance(ps, ProcessSet):
                raise ValueError(f"process_sets must hold ProcessSet objects, got {type(ps).__name__}")
        runtime.init(comm)
        control, data = (transport.MpiTransport(runtime.comm().Dup()) for _ in range(2))
        data.topology()  # the hosts, found now (collective) rather than in the engine's first op
        engine.start(control, data)
        _dynamic = bool(config.DYNAMIC_PROCESS_SETS.get())
        global_process_set.ranks = list(range(runtime.size()))
    for i, ps in enumerate(process_sets):
        if _register(ps, f"init.process_set.{i}") is None:
            raise ValueError(f"Horovod could not be initialized because process_sets entry number {i} is a "
                             f"duplicate: {ps}")


def _register(ps: ProcessSet, name: str) -> int | None:
    """Collective over all ranks: register ``ps`` (its id, or None for a duplicate)."""
    assert ps.ranks is not None  # the global set is never registered
    bad = [r for r in ps.ranks if not 0 <= r < runtime.size()]
    eng = engine.current()
    ranks = tuple(ps.ranks)

    def build() -> list[Work]:
        if bad:
            raise ValueError(f"process set ranks {bad} are out of range for size {runtime.size()}")
        if not ranks:
            raise ValueError("a process set needs at least one rank")
        return [Work(requests.add_process_set(name, ranks), lambda link, reqs: eng.add_set(ranks))]

    set_id = submit_checked(OpType.ADD_PROCESS_SET, [name], build)[0].wait()
    ps.process_set_id = set_id
    return set_id


_set_names = itertools.count()


def add_process_set(process_set: ProcessSet | Sequence[int]) -> ProcessSet:
    """Collective over all ranks (in the same order everywhere): register a new process set
    and return it. Needs HOROVOD_DYNAMIC_PROCESS_SETS=1; no set with the same ranks may exist."""
    engine.current()
    if not _dynamic:
        raise ValueError("Set HOROVOD_DYNAMIC_PROCESS_SETS=1 to allow adding process sets after Horovod "
                         "initialization.")
    if not isinstance(process_set, ProcessSet):
        process_set = ProcessSet(process_set)
    if _register(process_set, f"add_process_set.{next(_set_names)}") is None:
        raise ValueError(f"Attempted to add a duplicate process set: {process_set}")
    return process_set


def remove_process_set(process_set: ProcessSet) -> bool:
    """Collective over all ranks: remove a set added before (its ops must be done); False for
    the global set or one not registered. Needs HOROVOD_DYNAMIC_PROCESS_SETS=1."""
    eng = engine.current()
    if not _dynamic:
        raise ValueError("Set HOROVOD_DYNAMIC_PROCESS_SETS=1 to allow removing process sets after Horovod "
                         "initialization.")
    set_id = process_set.process_set_id
    if set_id is None or set_id == 0:
        return False
    process_set._invalidate()
    name = f"remove_process_set.{next(_set_names)}"
    work = Work(requests.remove_process_set(name, set_id), lambda link, reqs: eng.remove_set(set_id))
    return submit(work).wait() is not None


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


def ddl_built() -> bool:
    return False


def ccl_built() -> bool:
    return False


def rocm_built() -> bool:
    return False


def is_homogeneous() -> bool:
    """True when every host runs the same number of ranks."""
    engine.current()
    return len(set(runtime.layout().ranks_per_host)) == 1


def start_timeline(file_path: str, mark_cycles: bool = False) -> None:
    """Start writing the Chrome-trace timeline (rank 0 writes ``file_path``; as GTOPK_TIMELINE)."""
    engine.current().timeline.start(file_path)


def stop_timeline() -> None:
    """Stop and close the timeline started by start_timeline or GTOPK_TIMELINE."""
    engine.current().timeline.stop()


# -------------------------------------------------------------------------------- handles


class _Handle:
    def __init__(self, works: list[Work], finish: Callable[[list[Any]], Any]):
        self.works = works
        self.finish = finish


def _new_handle(works: list[Work], finish: Callable[[list[Any]], Any]) -> int:
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


def _resolve_op(op: int | None, average: bool | None) -> int:
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
                    compression, group: int = 0, set_id: int = 0) -> Work:
    sparse = isinstance(compression, SparseCompressor)
    if sparse:
        if op not in (Sum, Average):
            raise ValueError("sparse compression supports only op=Sum or op=Average")
        if not tensor.dtype.is_floating_point:
            raise ValueError(f"Tensor type {tensor.type()} is not supported by sparse compression.")
    snapshot = tensor.detach().clone()  # the tensor may change before the op runs

    def run(link: transport.EngineTransport, reqs: list[Request]) -> torch.Tensor:
        y, _ = reduce_flat(link, snapshot.reshape(-1), op, compression, prescale, postscale)
        return y.reshape(tensor.shape).to(dtype=tensor.dtype)

    return Work(requests.allreduce(name, tensor, OP_NAMES[op], prescale, postscale, description(compression),
                                   group=group, process_set=set_id), run)


def _submit_allreduces(tensors: Sequence[torch.Tensor], name: str | None, grouped: bool,
                       average: bool | None, op: int | None, prescale: float, postscale: float,
                       process_set: ProcessSet, compression) -> list[Work]:
    """Check, then submit one named allreduce per tensor (grouped: ``{name}.{i}``)."""
    def prepare() -> WorkOf:
        resolved = _resolve_op(op, average)
        return lambda t, n, group, set_id: _allreduce_work(t, n, resolved, prescale, postscale, compression,
                                                           group, set_id)

    return submit_op(OpType.ALLREDUCE, tensors, name, grouped, process_set, prepare, DTYPE_NAMES)


def _copy_into(tensors: Sequence[torch.Tensor]) -> Callable[[list[Any]], list[torch.Tensor]]:
    """synchronize() of an in-place op: write each result into its tensor."""
    def finish(results: list[Any]) -> list[torch.Tensor]:
        with torch.no_grad():
            for t, r in zip(tensors, results):
                t.copy_(r)
        return list(tensors)

    return finish


def allreduce_async(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
                    op: int | None = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                    process_set: ProcessSet = global_process_set, compression=Compression.none) -> int:
    """Start an allreduce of ``tensor`` (not modified); returns a handle for synchronize()."""
    works = _submit_allreduces([tensor], name, False, average, op, prescale_factor,
                               postscale_factor, process_set, compression)
    return _new_handle(works, lambda r: r[0])


def allreduce_async_(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
                     op: int | None = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                     process_set: ProcessSet = global_process_set, compression=Compression.none) -> int:
    """In-place allreduce_async: synchronize() writes the result into ``tensor`` and returns it."""
    works = _submit_allreduces([tensor], name, False, average, op, prescale_factor,
                               postscale_factor, process_set, compression)
    finish = _copy_into([tensor])
    return _new_handle(works, lambda r: finish(r)[0])


class _AllreduceFn(torch.autograd.Function):
    """allreduce of ``tensors`` (grouped: as grouped_allreduce); the gradient is the same
    reduction of the outputs' gradients."""

    @staticmethod
    def forward(ctx, grouped, name, average, op, prescale, postscale, process_set, compression, *tensors):
        ctx.args = (grouped, average, op, prescale, postscale, process_set)
        return synchronize(_new_handle(_submit_allreduces(tensors, name, grouped, average, op, prescale,
                                                          postscale, process_set, compression), tuple))

    @staticmethod
    def backward(ctx, *grads):
        grouped, average, op, prescale, postscale, process_set = ctx.args
        return (None,) * 8 + _AllreduceFn.apply(grouped, None, average, op, prescale, postscale, process_set,
                                                Compression.none, *(g.contiguous() for g in grads))


def allreduce(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
              compression=Compression.none, op: int | None = None, prescale_factor: float = 1.0,
              postscale_factor: float = 1.0, process_set: ProcessSet = global_process_set) -> torch.Tensor:
    """Reduce ``tensor`` over the set's ranks (default: average); differentiable. Returns a new tensor."""
    if isinstance(compression, SparseCompressor) or not isinstance(tensor, torch.Tensor):
        return synchronize(allreduce_async(tensor, average, name, op, prescale_factor, postscale_factor,
                                           process_set, compression))
    return _AllreduceFn.apply(False, name, average, op, prescale_factor, postscale_factor, process_set, compression,
                              tensor)[0]


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
    works = _submit_allreduces(tensors, name, True, average, op, prescale_factor,
                               postscale_factor, process_set, compression)
    return _new_handle(works, list)


def grouped_allreduce_async_(tensors: Sequence[torch.Tensor], average: bool | None = None, name: str | None = None,
                             op: int | None = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                             process_set: ProcessSet = global_process_set, compression=Compression.none) -> int:
    """In-place grouped_allreduce_async."""
    works = _submit_allreduces(tensors, name, True, average, op, prescale_factor,
                               postscale_factor, process_set, compression)
    return _new_handle(works, _copy_into(tensors))


def grouped_allreduce(tensors: Sequence[torch.Tensor], average: bool | None = None, name: str | None = None,
                      compression=Compression.none, op: int | None = None, prescale_factor: float = 1.0,
                      postscale_factor: float = 1.0,
                      process_set: ProcessSet = global_process_set) -> list[torch.Tensor]:
    """Allreduce each tensor of a list (one negotiation for the group); differentiable."""
    if isinstance(compression, SparseCompressor) or not all(isinstance(t, torch.Tensor) for t in tensors) \
            or not tensors:
        return synchronize(grouped_allreduce_async(tensors, average, name, op, prescale_factor, postscale_factor,
                                                   process_set, compression))
    return list(_AllreduceFn.apply(True, name, average, op, prescale_factor, postscale_factor, process_set,
                                   compression, *tensors))


def grouped_allreduce_(tensors: Sequence[torch.Tensor], average: bool | None = None, name: str | None = None,
                       op: int | None = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                       process_set: ProcessSet = global_process_set,
                       compression=Compression.none) -> list[torch.Tensor]:
    return synchronize(grouped_allreduce_async_(tensors, average, name, op, prescale_factor, postscale_factor,
                                                process_set, compression))


def sparse_allreduce_async(tensor: torch.Tensor, name: str, op: int,
                           process_set: ProcessSet = global_process_set) -> Callable[[], torch.Tensor]:
    """Reduce a sparse COO tensor as Horovod does: allgather of its indices and values (so
    duplicates are summed when the result is coalesced); Average divides the values by the
    set's size. Returns a function that waits and returns the (uncoalesced) sparse sum."""
    if not isinstance(tensor, torch.Tensor) or not tensor.is_sparse:
        raise ValueError("sparse_allreduce_async expects a sparse COO tensor")
    t = tensor
    indices_handle = allgather_async(t._indices().transpose(0, 1).contiguous(), name=f"{name}.indices",
                                     process_set=process_set)
    values_handle = allgather_async(t._values().contiguous(), name=f"{name}.values", process_set=process_set)

    def handle() -> torch.Tensor:
        values = synchronize(values_handle)
        indices = synchronize(indices_handle)
        values = (values / process_set.size()) if op == Average else values
        if indices.dim() == 0 or values.dim() == 0:
            return t.new().resize_as_(t)
        return torch.sparse_coo_tensor(indices.transpose(0, 1), values, t.size(), check_invariants=True)

    return handle


# -------------------------------------------------------------------------------- allgather


def _allgather_work(tensor: torch.Tensor, name: str, group: int, set_id: int) -> Work:
    snapshot = tensor.detach().to("cpu", copy=True)
    shape = tuple(tensor.shape)

    def run(link: transport.EngineTransport, reqs: list[Request]) -> tuple[torch.Tensor, list[int]]:
        rows = [r.shape[0] for r in reqs]
        row = int(np.prod(shape[1:], dtype=np.int64))
        counts = [n * row for n in rows]
        mine = host_bits(snapshot.reshape(-1))
        out = np.empty(sum(counts), dtype=mine.dtype)
        link.allgatherv(mine, counts, out)
        return from_host_bits(out, snapshot.dtype).reshape((sum(rows), *shape[1:])).to(tensor.device), rows

    return Work(requests.allgather(name, tensor, group=group, process_set=set_id), run)


def _submit_allgathers(tensors: Sequence[torch.Tensor], name: str | None, grouped: bool,
                       process_set: ProcessSet) -> list[Work]:
    return submit_op(OpType.ALLGATHER, tensors, name, grouped, process_set, lambda: _allgather_work,
                     BROADCAST_DTYPES)


def allgather_async(tensor: torch.Tensor, name: str | None = None,
                    process_set: ProcessSet = global_process_set) -> int:
    """Start an allgather (concatenation along dim 0; first dims may differ between ranks)."""
    return _new_handle(_submit_allgathers([tensor], name, False, process_set), lambda r: r[0][0])


def grouped_allgather_async(tensors: Sequence[torch.Tensor], name: str | None = None,
                            process_set: ProcessSet = global_process_set) -> int:
    """Start an allgather of each tensor of a list; synchronize() returns the list."""
    return _new_handle(_submit_allgathers(tensors, name, True, process_set), lambda r: [x for x, _ in r])


def _gathered_slice(grad: torch.Tensor, rows: list[int], process_set: ProcessSet) -> torch.Tensor:
    r = process_set.rank()
    assert r is not None  # the op that recorded this gradient ran on the set
    return grad.narrow(0, sum(rows[:r]), rows[r])


class _AllgatherFn(torch.autograd.Function):
    """allgather of ``tensors`` (grouped: as grouped_allgather). Horovod's gradient: the
    outputs' gradients averaged over the ranks, this rank's rows."""

    @staticmethod
    def forward(ctx, grouped, name, process_set, *tensors):
        results = synchronize(_new_handle(_submit_allgathers(tensors, name, grouped, process_set), list))
        ctx.grouped, ctx.rows, ctx.process_set = grouped, [rows for _, rows in results], process_set
        return tuple(out for out, _ in results)

    @staticmethod
    def backward(ctx, *grads):
        reduced = _AllreduceFn.apply(ctx.grouped, None, None, Average, 1.0, 1.0, ctx.process_set, Compression.none,
                                     *(g.contiguous() for g in grads))
        return (None, None, None, *(_gathered_slice(g, rows, ctx.process_set) for g, rows in zip(reduced, ctx.rows)))


def allgather(tensor: torch.Tensor, name: str | None = None,
              process_set: ProcessSet = global_process_set) -> torch.Tensor:
    """Concatenate every member's tensor along dim 0 (differentiable)."""
    if not isinstance(tensor, torch.Tensor):
        return synchronize(allgather_async(tensor, name, process_set))
    return _AllgatherFn.apply(False, name, process_set, tensor)[0]


def grouped_allgather(tensors: Sequence[torch.Tensor], name: str | None = None,
                      process_set: ProcessSet = global_process_set) -> list[torch.Tensor]:
    """allgather of each tensor of a list (one negotiation for the group; differentiable)."""
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        return synchronize(grouped_allgather_async(tensors, name, process_set))
    return list(_AllgatherFn.apply(True, name, process_set, *tensors))


# -------------------------------------------------------------------------------- broadcast


def _broadcast_work(tensor: torch.Tensor, root_rank: int, name: str, set_id: int) -> Work:
    snapshot = tensor.detach().to("cpu", copy=True)
    members = members_of(set_id)

    def run(link: transport.EngineTransport, reqs: list[Request]) -> torch.Tensor:
        root = root_index(root_rank, members)
        buf = host_bits(snapshot.reshape(-1))
        link.bcast(buf.view(np.uint8) if buf.dtype == np.bool_ else buf, root)
        return snapshot.to(tensor.device)

    return Work(requests.broadcast(name, tensor, root_rank, process_set=set_id), run)


def _submit_broadcast(tensor: torch.Tensor, root_rank: int, name: str | None, process_set: ProcessSet
                      ) -> list[Work]:
    return submit_op(OpType.BROADCAST, [tensor], name, False, process_set,
                     lambda: lambda t, n, group, set_id: _broadcast_work(t, root_rank, n, set_id), BROADCAST_DTYPES)


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
        ctx.root_rank, ctx.process_set = root_rank, process_set
        return synchronize(broadcast_async(tensor, root_rank, name, process_set))

    @staticmethod
    def backward(ctx, grad):
        reduced = allreduce(grad.contiguous(), op=Average, process_set=ctx.process_set)
        if rank() != ctx.root_rank:
            reduced = reduced * 0
        return reduced, None, None, None


def broadcast(tensor: torch.Tensor, root_rank: int, name: str | None = None,
              process_set: ProcessSet = global_process_set) -> torch.Tensor:
    """Return root_rank's tensor on every member (differentiable). root_rank: a global rank."""
    if not isinstance(tensor, torch.Tensor):
        return synchronize(broadcast_async(tensor, root_rank, name, process_set))
    return _BroadcastFn.apply(tensor, root_rank, name, process_set)


def broadcast_(tensor: torch.Tensor, root_rank: int, name: str | None = None,
               process_set: ProcessSet = global_process_set) -> torch.Tensor:
    """Overwrite ``tensor`` with root_rank's on every member."""
    return synchronize(broadcast_async_(tensor, root_rank, name, process_set))


# -------------------------------------------------------------------------------- alltoall


def _alltoall_work(tensor: torch.Tensor, splits: list[int] | None, name: str, set_id: int) -> Work:
    snapshot = tensor.detach().to("cpu", copy=True)
    shape = tuple(tensor.shape)
    n = len(members_of(set_id))
    if splits is None:
        if not shape or shape[0] % n:
            raise ValueError(f"alltoall: the first dimension ({shape[0] if shape else 'none'}) cannot be split "
                             f"equally among {n} ranks; pass splits")
        splits = [shape[0] // n] * n
    elif len(splits) != n or any(s < 0 for s in splits) or (shape and sum(splits) != shape[0]):
        raise ValueError(f"alltoall: splits {splits} must be {n} non-negative row counts summing to the first "
                         f"dimension ({shape[0] if shape else 'none'})")

    def run(link: transport.EngineTransport, reqs: list[Request]) -> tuple[torch.Tensor, torch.Tensor]:
        recv_rows = [r.splits[link.rank] for r in reqs]
        arr = host_bits(snapshot.reshape(-1))
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * arr.itemsize
        out = np.empty(sum(recv_rows) * row_bytes, np.uint8)
        link.alltoallv(arr.view(np.uint8), [s * row_bytes for s in splits], out, [s * row_bytes for s in recv_rows])
        result = from_host_bits(out.view(arr.dtype), snapshot.dtype).reshape((sum(recv_rows), *shape[1:]))
        return result.to(tensor.device), torch.tensor(recv_rows, dtype=torch.int32)

    return Work(requests.alltoall(name, tensor, splits, process_set=set_id), run)


def alltoall_async(tensor: torch.Tensor, splits=None, name: str | None = None,
                   process_set: ProcessSet = global_process_set) -> int:
    """Start an alltoall: rows splits[j] of ``tensor`` (dim 0, in order) go to member j (None:
    equal parts); synchronize() returns (rows received from every member, concatenated in
    member order; the int32 tensor of received row counts)."""
    def work_of(t: torch.Tensor, n: str, group: int, set_id: int) -> Work:  # after the tensor checks, as Horovod
        rows = None if splits is None else [int(s) for s in torch.as_tensor(splits).reshape(-1).tolist()]
        return _alltoall_work(t, rows, n, set_id)

    works = submit_op(OpType.ALLTOALL, [tensor], name, False, process_set, lambda: work_of, BROADCAST_DTYPES)
    return _new_handle(works, lambda r: r[0])


class _AlltoallFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, splits, name, process_set):
        output, received = synchronize(alltoall_async(tensor, splits, name, process_set))
        ctx.process_set, ctx.received = process_set, received
        if splits is None:
            return output
        ctx.mark_non_differentiable(received)
        return output, received

    @staticmethod
    def backward(ctx, grad, *unused):
        back, _ = alltoall(grad.contiguous(), splits=ctx.received, process_set=ctx.process_set)
        return back, None, None, None


def alltoall(tensor: torch.Tensor, splits=None, name: str | None = None,
             process_set: ProcessSet = global_process_set):
    """alltoall (differentiable): the gathered rows, and with ``splits`` also the received
    row counts (Horovod's return convention)."""
    if not isinstance(tensor, torch.Tensor):
        output, received = synchronize(alltoall_async(tensor, splits, name, process_set))
        return output if splits is None else (output, received)
    return _AlltoallFn.apply(tensor, splits, name, process_set)


# -------------------------------------------------------------------------------- reducescatter


def scatter_rows(rows: int, n: int) -> list[int]:
    """Horovod's split of dim 0 among n ranks: the first rows % n ranks get one more."""
    return [rows // n + (1 if q < rows % n else 0) for q in range(n)]


def _reducescatter_work(tensor: torch.Tensor, name: str, op: int, prescale: float, postscale: float,
                        compression, group: int, set_id: int) -> Work:
    if op not in (Sum, Average):
        raise ValueError("Reducescatter currently only supports AVERAGE and SUM.")
    if isinstance(compression, SparseCompressor):
        raise ValueError("reducescatter does not take a sparse compression")
    snapshot = tensor.detach().to("cpu", copy=True)
    shape = tuple(tensor.shape)

    def run(link: transport.EngineTransport, reqs: list[Request]) -> torch.Tensor:
        rows = scatter_rows(shape[0], link.size)
        row = int(np.prod(shape[1:], dtype=np.int64))
        src = snapshot.reshape(-1)
        src = src.float() if src.dtype == torch.bfloat16 else src  # bfloat16: scaled and summed in float32
        c, ctx = compression.compress(scale(src, prescale))
        arr = c.numpy()
        wide = arr.astype(np.float32) if arr.dtype == np.float16 else arr  # MPI sums float16 as float32
        out = np.empty(rows[link.rank] * row, wide.dtype)
        link.reduce_scatter(wide, [n * row for n in rows], out)
        y = compression.decompress(torch.from_numpy(out.astype(arr.dtype, copy=False)), ctx)
        if op == Average:
            y = average(y, link.size)
        return scale(y, postscale).to(tensor.dtype).reshape((rows[link.rank], *shape[1:])).to(tensor.device)

    return Work(requests.reducescatter(name, tensor, OP_NAMES[op], prescale, postscale, description(compression),
                                       group=group, process_set=set_id), run)


def _submit_reducescatters(tensors: Sequence[torch.Tensor], name: str | None, grouped: bool, op: int | None,
                           prescale: float, postscale: float, process_set: ProcessSet, compression) -> list[Work]:
    def prepare() -> WorkOf:
        resolved = _resolve_op(op, None)
        return lambda t, n, group, set_id: _reducescatter_work(t, n, resolved, prescale, postscale, compression,
                                                               group, set_id)

    return submit_op(OpType.REDUCESCATTER, tensors, name, grouped, process_set, prepare, DTYPE_NAMES)


def reducescatter_async(tensor: torch.Tensor, name: str | None = None, op: int = Average,
                        process_set: ProcessSet = global_process_set, prescale_factor: float = 1.0,
                        postscale_factor: float = 1.0, compression=Compression.none) -> int:
    """Start a reduce-scatter: op (Sum or Average) over the members, then member j keeps its
    part of dim 0 (the first rows % size members one row more)."""
    return _new_handle(_submit_reducescatters([tensor], name, False, op, prescale_factor, postscale_factor,
                                              process_set, compression), lambda r: r[0])


def grouped_reducescatter_async(tensors: Sequence[torch.Tensor], name: str | None = None, op: int = Average,
                                process_set: ProcessSet = global_process_set, prescale_factor: float = 1.0,
                                postscale_factor: float = 1.0, compression=Compression.none) -> int:
    return _new_handle(_submit_reducescatters(tensors, name, True, op, prescale_factor, postscale_factor,
                                              process_set, compression), list)


def _reducescatter_grad(grad: torch.Tensor, op: int, prescale: float, postscale: float,
                        process_set: ProcessSet) -> torch.Tensor:
    if op == Sum:
        size = process_set.size()
        assert size is not None  # the op that recorded this gradient ran on the set
        grad = grad * size
    return grad * prescale * postscale if (prescale, postscale) != (1.0, 1.0) else grad


class _ReducescatterFn(torch.autograd.Function):
    """reducescatter of ``tensors`` (grouped: as grouped_reducescatter); the gradient: the
    outputs' gradients gathered (times the size for Sum, and the scale factors)."""

    @staticmethod
    def forward(ctx, grouped, name, op, process_set, prescale, postscale, compression, *tensors):
        ctx.args = (grouped, op, prescale, postscale, process_set)
        return synchronize(_new_handle(_submit_reducescatters(tensors, name, grouped, op, prescale, postscale,
                                                              process_set, compression), tuple))

    @staticmethod
    def backward(ctx, *grads):
        grouped, op, prescale, postscale, process_set = ctx.args
        grads = tuple(_reducescatter_grad(g.contiguous(), op, prescale, postscale, process_set) for g in grads)
        return (None,) * 7 + _AllgatherFn.apply(grouped, None, process_set, *grads)


def reducescatter(tensor: torch.Tensor, name: str | None = None, compression=Compression.none, op: int = Average,
                  process_set: ProcessSet = global_process_set, prescale_factor: float = 1.0,
                  postscale_factor: float = 1.0) -> torch.Tensor:
    """Reduce over the members and return this member's part of dim 0 (differentiable)."""
    if not isinstance(tensor, torch.Tensor):
        return synchronize(reducescatter_async(tensor, name, op, process_set, prescale_factor, postscale_factor,
                                               compression))
    return _ReducescatterFn.apply(False, name, op, process_set, prescale_factor, postscale_factor, compression,
                                  tensor)[0]


def grouped_reducescatter(tensors: Sequence[torch.Tensor], name: str | None = None, compression=Compression.none,
                          op: int = Average, process_set: ProcessSet = global_process_set,
                          prescale_factor: float = 1.0, postscale_factor: float = 1.0) -> list[torch.Tensor]:
    """reducescatter of each tensor of a list (one negotiation for the group; differentiable)."""
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        return synchronize(grouped_reducescatter_async(tensors, name, op, process_set, prescale_factor,
                                                       postscale_factor, compression))
    return list(_ReducescatterFn.apply(True, name, op, process_set, prescale_factor, postscale_factor, compression,
                                       *tensors))


# -------------------------------------------------------------------------------- barrier, join


def barrier(process_set: ProcessSet = global_process_set) -> None:
    """Block until every member has called barrier()."""
    submit_op(OpType.BARRIER, [None], None, False, process_set,
              lambda: lambda t, n, group, set_id: Work(requests.barrier(n, process_set=set_id), no_run))[0].wait()


def join(device: int = -1) -> int:
    """Block until every rank has called join(); returns the rank that joined last.

    Horovod's semantics: while a rank waits here, it stands in with zeros for the
    allreduces of the global set that the other ranks still run (Average still divides
    by the full size), so ranks with fewer batches can stop early. Other ops submitted
    while a rank has joined fail with Horovod's "not supported with Join" error.
    "Last" is judged by the negotiation round in which each join was first seen (ties:
    the higher rank).
    """
    engine.current()
    return int(submit(Work(requests.join(unnamed_counts()), lambda link, reqs: realign_unnamed(reqs))).wait())

"""The CUDA path: top-k selection, sparse merge and scatter on the GPU, and the sparse
collectives for torch CUDA tensors (CuPy arrays are converted with DLPack).

Same semantics as the CPU path (exactly k entries, NaN first, ties to the lower index,
indices ascending; merge symmetric and bit-identical to the CPU merge). Kernels run on
the caller's current stream. In the sparse collectives only the k (index, value) pairs
cross PCIe: device -> pinned host memory -> MPI, then the result back to the device. The
dense allreduce stages through pinned memory too, or with GTOPK_MPI_CUDA_AWARE=1 hands the
device buffer to a CUDA-aware MPI.

Built when setup.py finds a CUDA toolkit (GTOPK_MPI_WITH_CUDA=auto|1); ``available()``
says whether this build has it and a GPU is usable.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time

import numpy as np
from mpi4py import MPI

from . import _C, collectives, runtime, wire
from .selection import resolve_k

DTYPE_CODES = {"float16": 0, "float32": 1, "bfloat16": 2}


def built() -> bool:
    """True when the extension was compiled with the CUDA kernels."""
    return bool(getattr(_C, "has_cuda", False))


def available() -> bool:
    """CUDA kernels built, torch importable and a GPU visible."""
    if not built():
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# -- where the kernels run -----------------------------------------------------------------

class _Cuda:
    """The CUDA build of csrc/cuda/topk_kernels.h on CUDA tensors, on the current stream;
    host copies through pinned memory."""

    wants = "a CUDA tensor"

    def usable(self) -> None:
        if not built():
            raise RuntimeError("gtopk_mpi was built without CUDA (GTOPK_MPI_WITH_CUDA=0 or no toolkit found)")

    def accepts(self, t) -> bool:
        return bool(t.is_cuda)

    @staticmethod
    def _stream(t) -> int:
        import torch

        return torch.cuda.current_stream(t.device).cuda_stream

    # Each call runs with the tensor's device current (the kernels launch on the current
    # device, on that device's current torch stream).
    def select(self, code: int, x, residual, k: int, out_idx, out_val) -> None:
        import torch

        with torch.cuda.device(x.device):
            _C.cuda_select_topk(code, x.data_ptr(), 0 if residual is None else residual.data_ptr(), x.numel(), k,
                                out_idx.dtype == torch.int64, out_idx.data_ptr(), out_val.data_ptr(),
                                self._stream(x))

    def merge(self, code: int, ia, va, ib, vb, k: int, out_idx, out_val) -> int:
        import torch

        with torch.cuda.device(va.device):
            return _C.cuda_merge_topk(code, ia.dtype == torch.int64, ia.data_ptr(), va.data_ptr(), ia.numel(),
                                      ib.data_ptr(), vb.data_ptr(), ib.numel(), k, out_idx.data_ptr(),
                                      out_val.data_ptr(), self._stream(va))

    def scatter(self, code: int, idx, val, out) -> None:
        import torch

        with torch.cuda.device(val.device):
            _C.cuda_scatter(code, idx.dtype == torch.int64, idx.data_ptr(), val.data_ptr(), idx.numel(),
                            out.data_ptr(), self._stream(val))

    def zero_at(self, code: int, idx, residual) -> None:
        import torch

        with torch.cuda.device(residual.device):
            _C.cuda_zero_at(code, idx.dtype == torch.int64, idx.data_ptr(), idx.numel(), residual.data_ptr(),
                            self._stream(residual))

    def to_host(self, t) -> np.ndarray:
        import torch

        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        torch.cuda.current_stream(t.device).synchronize()
        return host.numpy()

    def to_device(self, a: np.ndarray, device):
        import torch

        return torch.from_numpy(np.ascontiguousarray(a)).pin_memory().to(device, non_blocking=True)

    def synchronize(self, t) -> None:
        import torch

        torch.cuda.current_stream(t.device).synchronize()


class _Emulated(_Cuda):
    """The same kernels and launch sequence on the CPU's SIMT emulator (gtopk_mpi._cuda_emu),
    on CPU tensors standing in for device memory: this module's code checked without a GPU."""

    wants = "a CPU tensor (the emulated device)"

    def usable(self) -> None:
        pass

    def accepts(self, t) -> bool:
        return t.device.type == "cpu"

    @staticmethod
    def _np(t) -> np.ndarray:
        import torch

        return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()

    def select(self, code: int, x, residual, k: int, out_idx, out_val) -> None:
        import torch

        from . import _cuda_emu

        idx, val = _cuda_emu.select_topk(self._np(x), k, None if residual is None else self._np(residual),
                                         bf16=code == DTYPE_CODES["bfloat16"], idx64=out_idx.dtype == torch.int64)
        out_idx.numpy()[:] = idx
        self._np(out_val)[:] = val

    def merge(self, code: int, ia, va, ib, vb, k: int, out_idx, out_val) -> int:
        import torch

        from . import _cuda_emu

        if ia.dtype != torch.int32:
            raise ValueError("the emulated merge takes int32 indices")
        idx, val = _cuda_emu.merge_topk(ia.numpy(), self._np(va), ib.numpy(), self._np(vb), k,
                                        bf16=code == DTYPE_CODES["bfloat16"])
        out_idx.numpy()[: idx.size] = idx
        self._np(out_val)[: idx.size] = val
        return int(idx.size)

    def scatter(self, code: int, idx, val, out) -> None:
        from . import _cuda_emu

        _cuda_emu.scatter(idx.numpy(), self._np(val), self._np(out), bf16=code == DTYPE_CODES["bfloat16"])

    def zero_at(self, code: int, idx, residual) -> None:
        from . import _cuda_emu

        _cuda_emu.zero_at(idx.numpy(), self._np(residual), bf16=code == DTYPE_CODES["bfloat16"])

    def to_host(self, t) -> np.ndarray:
        return t.numpy().copy()

    def to_device(self, a: np.ndarray, device):
        import torch

        return torch.from_numpy(np.array(a, copy=True))

    def synchronize(self, t) -> None:
        pass


_device: _Cuda = _Cuda()


def use_emulator(on: bool = True) -> None:
    """Tests: run this module on CPU tensors with the kernels on the SIMT emulator (True),
    or on CUDA tensors with the CUDA build (False, the default)."""
    global _device
    _device = _Emulated() if on else _Cuda()


def _torch(x):
    """A torch tensor view of x (torch CUDA tensor, or CuPy array through DLPack)."""
    import torch

    if isinstance(x, torch.Tensor):
        return x
    if hasattr(x, "__cuda_array_interface__") and hasattr(x, "toDlpack"):
        return torch.utils.dlpack.from_dlpack(x.toDlpack())
    raise ValueError(f"expected a torch CUDA tensor or a CuPy array, got {type(x).__name__}")


def _like(original, t):
    """t as the caller's array type: a CuPy array when ``original`` was one (zero-copy, DLPack)."""
    import torch

    if original is None or isinstance(original, torch.Tensor):
        return t
    import cupy

    return cupy.from_dlpack(t)


def _on_callers_stream(fn):
    """Run fn with torch's current stream set to CuPy's current one when its first argument
    is a CuPy array, so the kernels (and torch's allocations) follow the caller's stream."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        first = args[0] if args else None
        if first is None or not hasattr(first, "__cuda_array_interface__") or hasattr(first, "data_ptr"):
            return fn(*args, **kwargs)
        import cupy
        import torch

        ptr = cupy.cuda.get_current_stream().ptr
        ctx = torch.cuda.stream(torch.cuda.ExternalStream(ptr)) if ptr else contextlib.nullcontext()
        with ctx:  # ptr 0: CuPy's null stream, the legacy default stream, torch's default too
            return fn(*args, **kwargs)

    return wrapper


def _check(x, name: str = "x") -> int:
    """The kernels' dtype code of x, or ValueError naming what is wrong with it."""
    _device.usable()
    if not _device.accepts(x):
        raise ValueError(f"{name} must be {_device.wants}")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    code = DTYPE_CODES.get(str(x.dtype).replace("torch.", ""))
    if code is None:
        raise ValueError(f"{name} has unsupported dtype {x.dtype} (supported: float16, float32, bfloat16)")
    return code


def _check_indices(idx, val, name: str) -> None:
    import torch

    if idx.dtype not in (torch.int32, torch.int64) or idx.dim() != 1 or not idx.is_contiguous():
        raise ValueError(f"{name} indices must be a contiguous 1-D int32 or int64 tensor")
    if idx.device != val.device or idx.numel() != val.numel():
        raise ValueError(f"{name} indices must match its values (device and length)")


@_on_callers_stream
def select_topk(x, k: int, residual=None):
    """Top-min(k, m) of 1-D CUDA ``x`` (or of residual + x, residual updated in place).

    Returns (indices int32/int64 ascending, values) on x's device (CuPy arrays for CuPy input).
    """
    import torch

    given, x = x, _torch(x)
    code = _check(x)
    if residual is not None:
        residual = _torch(residual)
        if _check(residual, "residual") != code or residual.shape != x.shape or residual.device != x.device:
            raise ValueError("residual must match x (shape, dtype, device)")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    m = x.numel()
    idx64 = m > np.iinfo(np.int32).max
    n = min(int(k), m)
    out_idx = torch.empty(n, dtype=torch.int64 if idx64 else torch.int32, device=x.device)
    out_val = torch.empty(n, dtype=x.dtype, device=x.device)
    _device.select(code, x, residual, int(k), out_idx, out_val)
    return _like(given, out_idx), _like(given, out_val)


@_on_callers_stream
def merge_topk(idx_a, val_a, idx_b, val_b, k: int):
    """Union of two index-ascending CUDA sets, summed at equal indices, then top-k."""
    import torch

    given = val_a
    idx_a, val_a, idx_b, val_b = (_torch(t) for t in (idx_a, val_a, idx_b, val_b))
    code = _check(val_a, "val_a")
    if _check(val_b, "val_b") != code:
        raise ValueError("val_a and val_b differ in dtype")
    _check_indices(idx_a, val_a, "first")
    _check_indices(idx_b, val_b, "second")
    if idx_a.dtype != idx_b.dtype:
        raise ValueError("indices must both be int32 or both int64")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    cap = min(int(k), idx_a.numel() + idx_b.numel())
    out_idx = torch.empty(cap, dtype=idx_a.dtype, device=val_a.device)
    out_val = torch.empty(cap, dtype=val_a.dtype, device=val_a.device)
    n = _device.merge(code, idx_a, val_a, idx_b, val_b, int(k), out_idx, out_val)
    return _like(given, out_idx[:n]), _like(given, out_val[:n])


@_on_callers_stream
def to_dense(idx, val, m: int):
    """Dense CUDA vector of length m with val at idx (zeros elsewhere)."""
    import torch

    given, idx, val = val, _torch(idx), _torch(val)
    code = _check(val, "val")
    _check_indices(idx, val, "the")
    out = torch.zeros(m, dtype=val.dtype, device=val.device)
    _device.scatter(code, idx, val, out)
    return _like(given, out)


# -- the collectives on device arrays --------------------------------------------------

def cuda_aware() -> bool:
    """GTOPK_MPI_CUDA_AWARE=1: the collectives hand device buffers straight to MPI, which
    must then be CUDA-aware; otherwise data crosses PCIe through pinned host memory."""
    return os.environ.get("GTOPK_MPI_CUDA_AWARE", "0") == "1"


def to_host(t) -> np.ndarray:
    """A CUDA tensor's contents as a NumPy array, copied through pinned (page-locked) memory."""
    return _device.to_host(t)


def to_device(a: np.ndarray, device):
    """A NumPy array as a tensor on ``device``, copied from pinned memory."""
    return _device.to_device(a, device)


def _numpy_dtype(t) -> np.dtype | None:
    import torch

    names = {torch.float16: "float16", torch.float32: "float32", torch.float64: "float64", torch.int32: "int32",
             torch.int64: "int64"}
    return np.dtype(names[t.dtype]) if t.dtype in names else None


@_on_callers_stream
def dense_allreduce(x, average: bool = False, comm=None):
    """dense_allreduce for a 1-D CUDA tensor (or CuPy array): MPI_Allreduce of a pinned
    host copy, or of the device buffer itself with GTOPK_MPI_CUDA_AWARE=1. Same dtypes and
    results as the CPU path (float16 summed in float32, rounded once); returned on x's device.
    """

    comm = comm if comm is not None else runtime.comm()
    given, dtype = x, None

    def check() -> None:
        nonlocal x, dtype
        x = _torch(x)
        if not _device.accepts(x):
            raise ValueError(f"x must be {_device.wants}")
        if x.dim() != 1 or not x.is_contiguous():
            raise ValueError(f"x must be 1-D and contiguous, got shape {tuple(x.shape)}")
        dtype = _numpy_dtype(x)
        if dtype is None:
            raise ValueError(f"x has unsupported dtype {x.dtype} (supported: float16, float32, float64, int32, "
                             "int64)")

    err = collectives._local_error(comm, check)
    collectives.agree_dense(comm, x.numel() if err is None else -1, dtype, average, err)
    aware = cuda_aware()
    space = DeviceSpace(x.device) if aware else collectives.HOST
    out = space.allreduce(comm, x if aware else to_host(x))  # a new array either way: x is not changed
    if average:
        out = space.scale_average(out, comm.Get_size())
    return _like(given, out if aware else to_device(out, x.device))


class DeviceSpace(collectives.HostSpace):
    """Sets and messages of the sparse collectives in device memory (GTOPK_MPI_CUDA_AWARE=1):
    packed and unpacked by torch on the device, merged by the GPU merge, handed to a
    CUDA-aware MPI as device buffers; only the 40-byte headers (and error texts) are read
    on the host."""

    def __init__(self, device):
        self.device = device

    def empty(self, nbytes: int):
        import torch

        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def empty_set(self):
        import torch

        return (torch.zeros(0, dtype=torch.int32, device=self.device),
                torch.zeros(0, dtype=torch.float32, device=self.device))

    def numpy_dtype(self, val) -> np.dtype:
        return _numpy_dtype(val)

    def ready(self, buf):
        _device.synchronize(buf)  # MPI reads device memory outside torch's stream order
        return buf

    def pack(self, header: np.ndarray, *parts):
        import torch

        chunks = [to_device(header.view(np.uint8), self.device)]
        for part in parts:
            if isinstance(part, bytes):
                chunks.append(to_device(np.frombuffer(part, np.uint8), self.device))
            else:
                chunks.append(part.contiguous().view(torch.uint8))
        return torch.cat(chunks)

    def header(self, buf) -> np.void:
        return wire.unpack_header(to_host(buf[: wire.HEADER.itemsize]))

    def error_text(self, buf) -> str:
        return wire.error_text(to_host(buf))

    def entries(self, buf, count: int, idx_dtype, val_dtype):
        body = buf[wire.HEADER.itemsize :]
        idx, val = self.split_entries(body, count, idx_dtype, val_dtype)
        return idx, val, body[(idx.element_size() + val.element_size()) * count :]

    def pack_entries(self, idx, val):
        import torch

        return torch.cat([idx.view(torch.uint8), val.view(torch.uint8)])

    def split_entries(self, buf, count: int, idx_dtype, val_dtype):
        ni = count * idx_dtype.itemsize
        return buf[:ni].view(idx_dtype), buf[ni : ni + count * val_dtype.itemsize].view(val_dtype)

    def merge(self, ia, va, ib, vb, k: int):
        return merge_topk(ia, va, ib, vb, k)

    def survivors(self, mine, kept):
        import torch

        return torch.isin(mine, kept)

    def ones_mask(self, n: int):
        import torch

        return torch.ones(n, dtype=torch.bool, device=self.device)

    def mask_bytes(self, mask):
        import torch

        return mask.view(torch.uint8)

    def bytes_mask(self, tail):
        import torch

        return tail.view(torch.bool)

    def allreduce(self, comm, vals):
        import torch

        wide = vals.float() if vals.dtype == torch.float16 else vals.clone()
        comm.Allreduce(MPI.IN_PLACE, self.ready(wide))
        return wide.to(vals.dtype)

    def scale_average(self, vals, p: int):
        import torch

        if not vals.dtype.is_floating_point:
            return torch.div(vals, p, rounding_mode="floor")
        return (vals.float() / p).to(vals.dtype) if vals.dtype == torch.float16 else vals / p


def _select_on_device(comm, x, k, density, residual, values: str, keep_on_device: bool):
    """Validate on this rank, then select on the GPU. Returns (error or None, k, indices,
    values, x as a tensor, residual): the k pairs copied to the host through pinned memory,
    or left on the device (keep_on_device)."""
    import torch

    err, kk = None, 0
    try:
        x = _torch(x)
        _check(x)
        if x.dtype == torch.bfloat16:
            raise ValueError("x has unsupported dtype torch.bfloat16 for the collectives (MPI has no bfloat16 sum)")
        if values not in wire.VALUE_MODES:
            raise ValueError(f"values must be 'merged' or 'exact', got {values!r}")
        kk = resolve_k(x.numel(), k, density)
        if residual is not None:
            residual = _torch(residual)
            if residual.shape != x.shape or residual.dtype != x.dtype or residual.device != x.device:
                raise ValueError("residual must match x (shape, dtype, device)")
    except ValueError as e:
        err = wire.Error(wire.ERROR_VALUE, f"rank {comm.Get_rank()}: {e}")
    if err is not None:
        return err, kk, None, None, x, residual
    d_idx, d_val = select_topk(x, kk, residual)
    if keep_on_device:
        return None, kk, d_idx, d_val, x, residual
    return None, kk, to_host(d_idx), to_host(d_val), x, residual   # only the k pairs leave the device


def _zero_at(residual, ids) -> None:
    """residual[ids] = 0; ids a host array or a tensor on residual's device."""
    if len(ids):
        if isinstance(ids, np.ndarray):
            ids = to_device(ids, residual.device)
        _device.zero_at(_check(residual, "residual"), ids, residual)


def _on_device(res: collectives.SparseResult, device, given) -> collectives.SparseResult:
    """The result on x's device, as the caller's array type (torch, or CuPy for CuPy input)."""
    if isinstance(res.values, np.ndarray):
        idx, val = to_device(res.indices, device), to_device(res.values, device)
    else:
        idx, val = res.indices, res.values  # already there (DeviceSpace)
    return collectives.SparseResult(_like(given, idx), _like(given, val), res.size, res.stats, carried=res.carried)


@_on_callers_stream
def topk_allreduce(x, k: int | None = None, density: float | None = None, average: bool = False,
                   residual=None, comm=None, align: bool = False):
    """topk_allreduce for a 1-D CUDA tensor (float16 or float32): selection (fused with the
    residual) on the GPU, the k pairs through pinned host memory (device buffers with
    GTOPK_MPI_CUDA_AWARE=1), Allgather and the unions as on the CPU path; the result on
    x's device."""
    comm = comm if comm is not None else runtime.comm()
    t_start = time.perf_counter()
    stats = collectives.CommStats()
    aware = cuda_aware()
    given = x
    err, kk, idx, val, x, residual = _select_on_device(comm, x, k, density, residual, "merged", aware)
    stats.select_s = time.perf_counter() - t_start
    space = DeviceSpace(x.device) if aware and err is None else collectives.HOST
    res = collectives.topk_exchange(comm, idx, val, x.numel() if err is None else -1, kk, err, average, stats,
                                    align, t_start, space)
    if residual is not None:
        _zero_at(residual, idx)
    return _on_device(res, x.device, given)


@_on_callers_stream
def gtopk_allreduce(x, k: int | None = None, density: float | None = None, average: bool = False,
                    residual=None, values: str = "merged", comm=None, align: bool = False):
    """gtopk_allreduce for a 1-D CUDA tensor (float16 or float32): selection and the
    residual pass on the GPU, the k pairs through pinned host memory and MPI (with
    GTOPK_MPI_CUDA_AWARE=1 the whole butterfly in device memory: device buffers to MPI,
    merges on the GPU), the result on x's device (``stats`` as on the CPU path).
    """
    import torch

    comm = comm if comm is not None else runtime.comm()
    t_start = time.perf_counter()
    stats = collectives.CommStats()
    aware = cuda_aware()
    given = x
    err, kk, idx, val, x, residual = _select_on_device(comm, x, k, density, residual, values, aware)
    stats.select_s = time.perf_counter() - t_start
    space = DeviceSpace(x.device) if aware and err is None else collectives.HOST
    bf = collectives.make_butterfly(comm, idx, val, x.numel() if err is None else -1, kk, err, average, values,
                                    stats, align, space)
    acc = residual if residual is not None else x

    def acc_at(ids):
        if isinstance(ids, np.ndarray):
            return to_host(acc[to_device(ids, acc.device).to(torch.int64)])
        return acc[ids.to(torch.int64)]

    res = collectives.finish_gtopk(bf, values, average, t_start, acc_at,
                                   (lambda ids: _zero_at(residual, ids)) if residual is not None else None)
    return _on_device(res, x.device, given)

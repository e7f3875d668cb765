"""The CUDA kernels (csrc/cuda/topk_kernels.h) on device arrays: top-k selection, merge,
scatter, and the copies between device and pinned host memory.

Same semantics as the CPU kernels (exactly k entries, NaN first, ties to the lower
index, indices ascending; merge symmetric and bit-identical to the CPU merge). Kernels
run with the array's device current, on torch's current stream of that device (for CuPy
input, on CuPy's current stream). Inputs: torch tensors, or CuPy arrays (viewed as torch
tensors through DLPack; results come back as CuPy arrays).

torch is imported on first use: the GPU path needs it, the package does not.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .. import _C, _cuda_emu

KERNEL_DTYPES = ("float16", "float32", "bfloat16")


def torch_module():
    import torch

    return torch


def built() -> bool:
    """True when the extension was compiled with the CUDA kernels."""
    return bool(getattr(_C, "has_cuda", False))


def available() -> bool:
    """CUDA kernels built, torch importable and a GPU visible."""
    if not built():
        return False
    try:
        return torch_module().cuda.is_available()
    except ImportError:
        return False


def dtype_name(t) -> str:
    return str(t.dtype).removeprefix("torch.")


def _code(t) -> int:
    return int(_C.DType.__members__[dtype_name(t)])


class CudaKernels:
    """The CUDA build of the kernels on CUDA tensors; host copies through pinned memory."""

    wants = "a CUDA tensor"

    def usable(self) -> None:
        if not built():
            raise RuntimeError("gtopk_mpi was built without CUDA (GTOPK_MPI_WITH_CUDA=0 or no toolkit found)")

    def accepts(self, t) -> bool:
        return bool(t.is_cuda)

    def device(self, device) -> contextlib.AbstractContextManager:
        return torch_module().cuda.device(device)

    @staticmethod
    def _stream(t) -> int:
        return torch_module().cuda.current_stream(t.device).cuda_stream

    def select(self, x, residual, k: int, out_idx, out_val) -> None:
        _C.cuda_select_topk(_code(x), x.data_ptr(), 0 if residual is None else residual.data_ptr(), x.numel(), k,
                            out_idx.element_size() == 8, out_idx.data_ptr(), out_val.data_ptr(), self._stream(x))

    def merge(self, ia, va, ib, vb, k: int, out_idx, out_val) -> int:
        return _C.cuda_merge_topk(_code(va), ia.element_size() == 8, ia.data_ptr(), va.data_ptr(), ia.numel(),
                                  ib.data_ptr(), vb.data_ptr(), ib.numel(), k, out_idx.data_ptr(),
                                  out_val.data_ptr(), self._stream(va))

    def scatter(self, idx, val, out) -> None:
        _C.cuda_scatter(_code(val), idx.element_size() == 8, idx.data_ptr(), val.data_ptr(), idx.numel(),
                        out.data_ptr(), self._stream(val))

    def zero_at(self, idx, residual) -> None:
        _C.cuda_zero_at(_code(residual), idx.element_size() == 8, idx.data_ptr(), idx.numel(), residual.data_ptr(),
                        self._stream(residual))

    def to_host(self, t) -> np.ndarray:
        host = torch_module().empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        self.synchronize(t)
        return host.numpy()

    def to_device(self, a: np.ndarray, device):
        return torch_module().from_numpy(np.ascontiguousarray(a)).pin_memory().to(device, non_blocking=True)

    def synchronize(self, t) -> None:
        torch_module().cuda.current_stream(t.device).synchronize()


class EmulatedKernels(CudaKernels):
    """The same kernels and launch sequence on the CPU's SIMT emulator (gtopk_mpi._cuda_emu),
    on CPU tensors standing in for device memory: the GPU path's code checked without a GPU."""

    wants = "a CPU tensor (the emulated device)"

    def usable(self) -> None:
        pass

    def accepts(self, t) -> bool:
        return t.device.type == "cpu"

    def device(self, device) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    @staticmethod
    def _np(t) -> np.ndarray:
        torch = torch_module()
        return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()

    @staticmethod
    def _bf16(t) -> bool:
        return t.dtype == torch_module().bfloat16

    def select(self, x, residual, k: int, out_idx, out_val) -> None:
        idx, val = _cuda_emu.select_topk(self._np(x), k, None if residual is None else self._np(residual),
                                         bf16=self._bf16(x), idx64=out_idx.element_size() == 8)
        out_idx.numpy()[:] = idx
        self._np(out_val)[:] = val

    def merge(self, ia, va, ib, vb, k: int, out_idx, out_val) -> int:
        if ia.element_size() != 4:
            raise ValueError("the emulated merge takes int32 indices")
        idx, val = _cuda_emu.merge_topk(ia.numpy(), self._np(va), ib.numpy(), self._np(vb), k, bf16=self._bf16(va))
        out_idx.numpy()[: idx.size] = idx
        self._np(out_val)[: idx.size] = val
        return int(idx.size)

    def scatter(self, idx, val, out) -> None:
        _cuda_emu.scatter(idx.numpy(), self._np(val), self._np(out), bf16=self._bf16(val))

    def zero_at(self, idx, residual) -> None:
        _cuda_emu.zero_at(idx.numpy(), self._np(residual), bf16=self._bf16(residual))

    def to_host(self, t) -> np.ndarray:
        return t.numpy().copy()

    def to_device(self, a: np.ndarray, device):
        return torch_module().from_numpy(np.array(a, copy=True))

    def synchronize(self, t) -> None:
        pass


_kernels: CudaKernels = CudaKernels()


def use_emulator(on: bool = True) -> None:
    """Tests: run the GPU path on CPU tensors with the kernels on the SIMT emulator (True),
    or on CUDA tensors with the CUDA build (False, the default)."""
    global _kernels
    _kernels = EmulatedKernels() if on else CudaKernels()


def kernels() -> CudaKernels:
    """The kernels in use (the CUDA build, or the emulator)."""
    return _kernels


def is_cupy(x: Any) -> bool:
    return hasattr(x, "__cuda_array_interface__") and not hasattr(x, "data_ptr")


def as_tensor(x: Any):
    """A torch tensor view of x (a torch tensor, or a CuPy array through DLPack)."""
    torch = torch_module()
    if isinstance(x, torch.Tensor):
        return x
    if is_cupy(x):
        return torch.utils.dlpack.from_dlpack(x.toDlpack())
    raise ValueError(f"expected a torch tensor or a CuPy array, got {type(x).__name__}")


def as_cupy(t):
    import cupy

    return cupy.from_dlpack(t)


@contextlib.contextmanager
def on_device(device, cupy_stream: bool = False) -> Iterator[None]:
    """Kernels launched inside run with ``device`` current and, with ``cupy_stream``, with
    torch's current stream set to CuPy's current one (so they follow a CuPy caller's stream)."""
    with _kernels.device(device), contextlib.ExitStack() as stack:
        if cupy_stream:
            import cupy

            ptr = cupy.cuda.get_current_stream().ptr
            if ptr:  # 0: CuPy's null stream, the legacy default stream, torch's default too
                torch = torch_module()
                stack.enter_context(torch.cuda.stream(torch.cuda.ExternalStream(ptr)))
        yield


def check(x, name: str, dtypes: Sequence[str] = KERNEL_DTYPES) -> str:
    """x's dtype name, or ValueError naming what is wrong with it (x a torch tensor)."""
    _kernels.usable()
    if not _kernels.accepts(x):
        raise ValueError(f"{name} must be {_kernels.wants}")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    if dtype_name(x) not in dtypes:
        raise ValueError(f"{name} has unsupported dtype {dtype_name(x)} (supported: {', '.join(dtypes)})")
    return dtype_name(x)


def _check_indices(idx, val, name: str) -> None:
    if dtype_name(idx) not in ("int32", "int64") or idx.dim() != 1 or not idx.is_contiguous():
        raise ValueError(f"{name} indices must be a contiguous 1-D int32 or int64 tensor")
    if idx.device != val.device or idx.numel() != val.numel():
        raise ValueError(f"{name} indices must match its values (device and length)")


def _public(fn):
    """A kernel entry point for callers: device arrays in (torch or CuPy; CuPy arguments are
    viewed as tensors), the same kind out, run on the first argument's device and stream."""

    @functools.wraps(fn)
    def wrapper(first, *args, **kwargs):
        with on_device(as_tensor(first).device, is_cupy(first)):
            out = fn(*(as_tensor(a) if is_cupy(a) else a for a in (first, *args)), **kwargs)
        if not is_cupy(first):
            return out
        return tuple(as_cupy(t) for t in out) if isinstance(out, tuple) else as_cupy(out)

    return wrapper


@_public
def select_topk(x, k: int, residual=None):
    """Top-min(k, m) of 1-D device ``x`` (or of residual + x, residual updated in place).

    Returns (indices int32/int64 ascending, values) on x's device.
    """
    torch = torch_module()
    check(x, "x")
    if residual is not None:
        residual = as_tensor(residual)
        if check(residual, "residual") != dtype_name(x) or residual.shape != x.shape or residual.device != x.device:
            raise ValueError("residual must match x (shape, dtype, device)")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    m = x.numel()
    n = min(int(k), m)
    out_idx = torch.empty(n, dtype=torch.int64 if m > np.iinfo(np.int32).max else torch.int32, device=x.device)
    out_val = torch.empty(n, dtype=x.dtype, device=x.device)
    _kernels.select(x, residual, int(k), out_idx, out_val)
    return out_idx, out_val


@_public
def merge_topk(idx_a, val_a, idx_b, val_b, k: int):
    """Union of two index-ascending device sets, summed at equal indices, then top-k."""
    torch = torch_module()
    if check(val_b, "val_b") != check(val_a, "val_a"):
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
    n = _kernels.merge(idx_a, val_a, idx_b, val_b, int(k), out_idx, out_val)
    return out_idx[:n], out_val[:n]


@_public
def to_dense(idx, val, m: int):
    """Dense device vector of length m with val at idx (zeros elsewhere)."""
    check(val, "val")
    _check_indices(idx, val, "the")
    out = torch_module().zeros(m, dtype=val.dtype, device=val.device)
    _kernels.scatter(idx, val, out)
    return out

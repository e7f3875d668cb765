"""The device kernels and which of them runs: top-k selection, merge, scatter, and the
copies between device and host memory, on device arrays.

Three implementations of one contract (:class:`DeviceKernels`): the custom CUDA kernels
(csrc/cuda/topk_kernels.h, :class:`CudaKernels`, built only where a CUDA toolkit was found),
the same kernels on the CPU's SIMT emulator (:class:`EmulatedKernels`, tests), and torch's
own operations (torch_kernels.TorchKernels: any torch device, no toolkit).
:func:`kernels_for` picks per device (GTOPK_DEVICE_KERNELS), logging its choice once.

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
import logging
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from .. import _C, _cuda_emu, config
from .torch_kernels import TorchKernels, torch_module

log = logging.getLogger(__name__)

KERNEL_DTYPES = ("float16", "float32", "bfloat16")


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
            raise RuntimeError("gtopk_mpi was built without CUDA (GTOPK_MPI_WITH_CUDA=0 or no toolkit found), and "
                               "GTOPK_DEVICE_KERNELS=cuda asks for its kernels (auto or torch: torch's operations)")

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


class DeviceKernels(Protocol):
    """The per-element work of the GPU path on device tensors (CudaKernels, EmulatedKernels,
    torch_kernels.TorchKernels): selection (fused with the residual when given), merge,
    scatter, zeroing, and the copies between device and host memory."""

    wants: str

    def usable(self) -> None: ...  # raises RuntimeError saying why this build cannot run them
    def accepts(self, t: Any) -> bool: ...
    def device(self, device: Any) -> contextlib.AbstractContextManager: ...
    def select(self, x: Any, residual: Any, k: int, out_idx: Any, out_val: Any) -> None: ...
    def merge(self, ia: Any, va: Any, ib: Any, vb: Any, k: int, out_idx: Any, out_val: Any) -> int: ...
    def scatter(self, idx: Any, val: Any, out: Any) -> None: ...
    def zero_at(self, idx: Any, residual: Any) -> None: ...
    def to_host(self, t: Any) -> np.ndarray: ...
    def to_device(self, a: np.ndarray, device: Any) -> Any: ...
    def synchronize(self, t: Any) -> None: ...


_STAND_INS: dict[str, DeviceKernels] = {"emulator": EmulatedKernels(), "torch": TorchKernels(cpu_stands_in=True)}
_forced: DeviceKernels | None = None  # tests: CPU tensors stand in for device memory (one of _STAND_INS)
_chosen: dict[str, DeviceKernels] = {}  # "knob value:device" -> the kernels kernels_for chose


def use_kernels(name: str | None) -> None:
    """Tests: CPU tensors stand in for device memory, run by the kernels ``name`` names:
    "emulator" (the CUDA kernels' launch sequence on the SIMT emulator) or "torch" (torch's
    own operations, torch_kernels.py); None: device tensors, the default."""
    global _forced
    if name is not None and name not in _STAND_INS:
        raise ValueError(f"use_kernels: expected one of {sorted(_STAND_INS)} or None, got {name!r}")
    _forced = None if name is None else _STAND_INS[name]


def cpu_stands_in() -> bool:
    """True when tests make CPU tensors stand in for device memory (use_kernels)."""
    return _forced is not None


def kernels_for(device: Any) -> DeviceKernels:
    """The kernels that run on ``device`` (a torch device of the tensor at hand).

    GTOPK_DEVICE_KERNELS: ``cuda`` the custom CUDA kernels (an error where not built),
    ``torch`` torch's operations on any device, ``auto`` the custom kernels for a CUDA
    device where built and working (a probe selection equal to torch's), else torch's.
    The choice is logged once per device.
    """
    if _forced is not None:
        return _forced
    torch = torch_module()
    device = torch.device(device)
    choice = config.DEVICE_KERNELS.get()
    key = f"{choice}:{device}"
    if key not in _chosen:
        _chosen[key] = _choose(choice, device)
    return _chosen[key]


def _choose(choice: str, device: Any) -> DeviceKernels:
    torch = torch_module()
    if choice == "cuda":
        return CudaKernels()
    on_torch, why = TorchKernels(), "GTOPK_DEVICE_KERNELS=torch"
    if choice == "auto":
        if device.type != "cuda" or getattr(torch.version, "hip", None):
            why = f"no custom kernels for {device.type if device.type != 'cuda' else 'ROCm'} devices"
        elif not built():
            why = "gtopk_mpi was built without CUDA (no toolkit at build time)"
        else:
            why = _probe(device)
            if not why:
                log.info("gtopk_mpi: %s runs the custom CUDA kernels", device)
                return CudaKernels()
    log.info("gtopk_mpi: %s runs the device kernels made of torch operations (%s)", device, why)
    return on_torch


def _probe(device: Any) -> str:
    """'' when the custom CUDA kernels run on ``device`` and select what torch's operations
    select; else why not (a build without this GPU's architecture, a driver too old)."""
    torch = torch_module()
    try:
        x = torch.randn(4096, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.cuda.device(device):
            got = [torch.empty(16, dtype=torch.int32, device=device), torch.empty(16, device=device)]
            want = [torch.empty_like(t) for t in got]
            CudaKernels().select(x, None, 16, *got)
            TorchKernels().select(x, None, 16, *want)
            same = all(bool(torch.equal(a, b)) for a, b in zip(got, want))
    except Exception as e:  # noqa: BLE001 - whatever stops the probe, torch's operations still run
        log.warning("gtopk_mpi: the custom CUDA kernels do not run on %s (%s)", device, e)
        return f"the custom kernels failed on this GPU: {e}"
    if not same:
        log.warning("gtopk_mpi: the custom CUDA kernels disagree with torch's operations on %s", device)
        return "the custom kernels disagreed with torch's on a probe"
    return ""


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
    with kernels_for(device).device(device), contextlib.ExitStack() as stack:
        if cupy_stream:
            import cupy

            ptr = cupy.cuda.get_current_stream().ptr
            if ptr:  # 0: CuPy's null stream, the legacy default stream, torch's default too
                torch = torch_module()
                stack.enter_context(torch.cuda.stream(torch.cuda.ExternalStream(ptr)))
        yield


def check(x, name: str, dtypes: Sequence[str] = KERNEL_DTYPES) -> str:
    """x's dtype name, or ValueError naming what is wrong with it (x a torch tensor)."""
    kern = kernels_for(x.device)
    kern.usable()
    if not kern.accepts(x):
        raise ValueError(f"{name} must be {kern.wants}")
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
    kernels_for(x.device).select(x, residual, int(k), out_idx, out_val)
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
    n = kernels_for(val_a.device).merge(idx_a, val_a, idx_b, val_b, int(k), out_idx, out_val)
    return out_idx[:n], out_val[:n]


@_public
def to_dense(idx, val, m: int):
    """Dense device vector of length m with val at idx (zeros elsewhere)."""
    check(val, "val")
    _check_indices(idx, val, "the")
    out = torch_module().zeros(m, dtype=val.dtype, device=val.device)
    kernels_for(val.device).scatter(idx, val, out)
    return out

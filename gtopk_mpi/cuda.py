"""The CUDA path: top-k selection, sparse merge and scatter on the GPU, and the sparse
collectives for torch CUDA tensors (CuPy arrays are converted with DLPack).

Same semantics as the CPU path (exactly k entries, NaN first, ties to the lower index,
indices ascending; merge symmetric and bit-identical to the CPU merge). Kernels run on
the caller's current stream. In the collectives only the k (index, value) pairs cross
PCIe: device -> host -> MPI, then the result back to the device.

Built when setup.py finds a CUDA toolkit (GTOPK_MPI_WITH_CUDA=auto|1); ``available()``
says whether this build has it and a GPU is usable.
"""

from __future__ import annotations

import time

import numpy as np

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


def _torch(x):
    """A torch tensor view of x (torch CUDA tensor, or CuPy array through DLPack)."""
    import torch

    if isinstance(x, torch.Tensor):
        return x
    if hasattr(x, "__cuda_array_interface__") and hasattr(x, "toDlpack"):
        return torch.utils.dlpack.from_dlpack(x.toDlpack())
    raise ValueError(f"expected a torch CUDA tensor or a CuPy array, got {type(x).__name__}")


def _check(x, name: str = "x") -> int:
    if not built():
        raise RuntimeError("gtopk_mpi was built without CUDA (GTOPK_MPI_WITH_CUDA=0 or no toolkit found)")
    if not x.is_cuda:
        raise ValueError(f"{name} must be a CUDA tensor")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    code = DTYPE_CODES.get(str(x.dtype).replace("torch.", ""))
    if code is None:
        raise ValueError(f"{name} has unsupported dtype {x.dtype} (supported: float16, float32, bfloat16)")
    return code


def _stream(x) -> int:
    import torch

    return torch.cuda.current_stream(x.device).cuda_stream


def select_topk(x, k: int, residual=None):
    """Top-min(k, m) of 1-D CUDA ``x`` (or of residual + x, residual updated in place).

    Returns (indices int32/int64 ascending, values) on x's device.
    """
    import torch

    x = _torch(x)
    code = _check(x)
    if residual is not None:
        residual = _torch(residual)
        if _check(residual, "residual") != code or residual.shape != x.shape or residual.device != x.device:
            raise ValueError("residual must match x (shape, dtype, device)")
    m = x.numel()
    idx64 = m > np.iinfo(np.int32).max
    n = min(int(k), m)
    out_idx = torch.empty(n, dtype=torch.int64 if idx64 else torch.int32, device=x.device)
    out_val = torch.empty(n, dtype=x.dtype, device=x.device)
    _C.cuda_select_topk(code, x.data_ptr(), 0 if residual is None else residual.data_ptr(), m, int(k), idx64,
                        out_idx.data_ptr(), out_val.data_ptr(), _stream(x))
    return out_idx, out_val


def merge_topk(idx_a, val_a, idx_b, val_b, k: int):
    """Union of two index-ascending CUDA sets, summed at equal indices, then top-k."""
    import torch

    idx_a, val_a, idx_b, val_b = (_torch(t) for t in (idx_a, val_a, idx_b, val_b))
    code = _check(val_a, "val_a")
    if _check(val_b, "val_b") != code:
        raise ValueError("val_a and val_b differ in dtype")
    if idx_a.dtype != idx_b.dtype or idx_a.dtype not in (torch.int32, torch.int64):
        raise ValueError("indices must both be int32 or both int64")
    cap = min(int(k), idx_a.numel() + idx_b.numel())
    out_idx = torch.empty(cap, dtype=idx_a.dtype, device=val_a.device)
    out_val = torch.empty(cap, dtype=val_a.dtype, device=val_a.device)
    n = _C.cuda_merge_topk(code, idx_a.dtype == torch.int64, idx_a.data_ptr(), val_a.data_ptr(), idx_a.numel(),
                           idx_b.data_ptr(), val_b.data_ptr(), idx_b.numel(), int(k), out_idx.data_ptr(),
                           out_val.data_ptr(), _stream(val_a))
    return out_idx[:n], out_val[:n]


def to_dense(idx, val, m: int):
    """Dense CUDA vector of length m with val at idx (zeros elsewhere)."""
    import torch

    idx, val = _torch(idx), _torch(val)
    out = torch.zeros(m, dtype=val.dtype, device=val.device)
    _C.cuda_scatter(_check(val, "val"), idx.dtype == torch.int64, idx.data_ptr(), val.data_ptr(), idx.numel(),
                    out.data_ptr(), _stream(val))
    return out


def gtopk_allreduce(x, k: int | None = None, density: float | None = None, average: bool = False,
                    residual=None, values: str = "merged", comm=None):
    """gtopk_allreduce for a 1-D CUDA tensor (float16 or float32): selection and the
    residual pass on the GPU, the k pairs through host memory and MPI, the result back.

    Returns a SparseResult whose ``indices``/``values`` are CUDA tensors on x's device
    (``stats`` as on the CPU path).
    """
    import torch

    comm = comm if comm is not None else runtime.comm()
    t_start = time.perf_counter()
    stats = collectives.CommStats()
    x = _torch(x)
    err, kk = None, 0
    try:
        _check(x)
        if x.dtype == torch.bfloat16:
            raise ValueError("x has unsupported dtype torch.bfloat16 for the collective (MPI has no bfloat16 sum)")
        if values not in wire.VALUE_MODES:
            raise ValueError(f"values must be 'merged' or 'exact', got {values!r}")
        kk = resolve_k(x.numel(), k, density)
        if residual is not None:
            residual = _torch(residual)
            if residual.shape != x.shape or residual.dtype != x.dtype or residual.device != x.device:
                raise ValueError("residual must match x (shape, dtype, device)")
    except ValueError as e:
        err = wire.Error(wire.ERROR_VALUE, f"rank {comm.Get_rank()}: {e}")
    idx = val = None
    if err is None:
        d_idx, d_val = select_topk(x, kk, residual)
        idx, val = d_idx.cpu().numpy(), d_val.cpu().numpy()   # only the k pairs leave the device
    stats.select_s = time.perf_counter() - t_start
    bf = collectives.make_butterfly(comm, idx, val, x.numel() if err is None else -1, kk, err, average, values,
                                    stats)
    acc = residual if residual is not None else x

    def acc_at(ids: np.ndarray) -> np.ndarray:
        return acc[torch.from_numpy(ids).to(acc.device, torch.int64)].cpu().numpy()

    def zero_at(ids: np.ndarray) -> None:
        residual[torch.from_numpy(ids).to(residual.device, torch.int64)] = 0

    res = collectives.finish_gtopk(bf, values, average, t_start, acc_at, zero_at if residual is not None else None)
    dev = x.device
    return collectives.SparseResult(torch.from_numpy(res.indices).to(dev), torch.from_numpy(res.values).to(dev),
                                    res.size, res.stats, carried=res.carried)

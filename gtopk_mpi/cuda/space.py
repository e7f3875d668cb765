"""DeviceSpace: the memory space (see gtopk_mpi.spaces) of torch tensors on one device.

Selection, merge, scatter and residual updates run as the device's kernels (kernels.py:
the custom CUDA kernels, or torch's own operations on any torch device); sets and messages
(when the call keeps them on the device: GTOPK_MPI_CUDA_AWARE=1) are packed and viewed
by torch on the device, and only the 56-byte headers and error texts are read on the
host. Under ``use_kernels(...)`` (tests) the device is the CPU: CPU tensors, the emulated
CUDA kernels or torch's operations.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _C
from ..topology import HostTree
from ..transport import Transport
from . import kernels as K


class DeviceSpace:
    """Tensors on ``device``; arrays handed back as CuPy arrays when ``cupy``."""

    sparse_dtypes: tuple[str, ...] = ("float16", "float32")  # the kernels' dtypes that MPI can also sum

    def __init__(self, device, cupy: bool = False):
        self.device = device
        self.cupy = cupy
        self.kernels = K.kernels_for(device)

    def adopt(self, a: Any):
        return K.as_tensor(a)

    def wrap(self, a: Any) -> Any:
        return K.as_cupy(a) if self.cupy else a

    def check(self, x, name: str, dtypes: Sequence[str]) -> str:
        torch = K.torch_module()
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a device tensor or CuPy array like x, got {type(x).__name__}")
        if x.device != self.device:
            raise ValueError(f"{name} must be on {self.device}, like x (got {x.device})")
        return K.check(x, name, dtypes)

    def dtype_name(self, a) -> str:
        return K.dtype_name(a)

    def activate(self) -> contextlib.AbstractContextManager:
        return K.on_device(self.device, self.cupy)

    def select(self, x, k: int, residual):
        return K.select_topk(x, k, residual)

    def merge(self, ia, va, ib, vb, k: int, ta=None, tb=None):
        idx, val = K.merge_topk(ia, va, ib, vb, k)
        if ta is None and tb is None:
            return idx, val
        tags = self._tags_at(idx, ia, ta) | self._tags_at(idx, ib, tb)
        return idx, val, tags

    @staticmethod
    def _tags_at(idx, src_idx, src_tags):
        """The tags of src at the indices of idx (0 where src lacks the index or has no tags)."""
        torch = K.torch_module()
        if src_tags is None or len(src_idx) == 0:
            return torch.zeros(len(idx), dtype=torch.int64, device=idx.device)
        pos = torch.searchsorted(src_idx, idx).clamp(max=len(src_idx) - 1)
        found = src_idx[pos] == idx
        return torch.where(found, src_tags[pos].long(), torch.zeros_like(pos))

    # the wire codec of host memory, staged: only the k pairs cross PCIe (see wire.py)
    def encode(self, idx, val, code: int, rounded: bool, pack: int):
        from_host = self.from_host
        payload, index_bytes, scale, packed, back, err = _C.encode_entries(self.to_host(idx), self.to_host(val), code,
                                                                            pack, rounded)
        staged = (None, None) if back is None else (from_host(back), from_host(err))
        return from_host(payload), index_bytes, scale, packed, *staged

    def decode(self, body, count: int, packed: bool, index_bytes: int, idx64: bool, code: int, scale: int,
               dtype: str, limit: int):
        idx, val = _C.decode_entries(self.to_host(body), count, packed, index_bytes, idx64, code, scale,
                                     np.dtype(dtype), limit)
        return self.from_host(idx), self.from_host(val)

    def adopt_tags(self, mine, tags, kept, flags):
        out = self.tags(len(kept), 0)
        out[flags] = tags[K.torch_module().isin(mine, kept[flags])]
        return out

    def gather(self, a, ids):
        return a[ids.long()]

    def zero_at(self, residual, ids) -> None:
        if len(ids):
            self.kernels.zero_at(ids, residual)

    def add_at(self, residual, ids, vals) -> None:
        residual.index_add_(0, ids.long(), vals.to(residual.dtype))

    def tags(self, n: int, bits: int):
        torch = K.torch_module()
        return torch.full((n,), bits, dtype=torch.int64, device=self.device)

    def settle(self, residual, idx, tags, own_bit: int, records: list):
        """As _C.settle (gtopk_mpi.spaces.Space), with torch on the device."""
        tags = tags.long()
        carried = idx[(tags & own_bit) != 0]
        self.zero_at(residual, carried)
        torch = K.torch_module()
        for bit, r_idx, r_err in records:
            kept = idx[(tags & bit) != 0]
            self.add_at(residual, kept, r_err[torch.searchsorted(r_idx, kept)])
        return carried

    def to_dense(self, idx, val, m: int):
        return self.wrap(K.to_dense(self.adopt(idx), self.adopt(val), m))

    def empty(self, nbytes: int):
        torch = K.torch_module()
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def empty_set(self):
        torch = K.torch_module()
        return (torch.zeros(0, dtype=torch.int32, device=self.device),
                torch.zeros(0, dtype=torch.float32, device=self.device))

    def bytes_of(self, a):
        return a.contiguous().view(K.torch_module().uint8)

    def view(self, buf, dtype: str):
        return buf.view(getattr(K.torch_module(), dtype))

    def concat(self, parts: list) -> Any:
        return K.torch_module().cat(parts)

    def ready(self, buf):
        self.kernels.synchronize(buf)  # the transport reads device memory outside torch's stream order
        return buf

    def allreduce(self, link: Transport | HostTree, vals: Any, op: str = "sum") -> Any:
        torch = K.torch_module()
        wide = vals.float() if vals.dtype == torch.float16 else vals.clone()
        link.allreduce(self.ready(wide), op)
        return wide.to(vals.dtype)

    def scale_average(self, vals, p: int):
        torch = K.torch_module()
        if not vals.dtype.is_floating_point:
            return torch.div(vals, p, rounding_mode="floor")
        return (vals.float() / p).to(vals.dtype) if vals.dtype == torch.float16 else vals / p

    def from_host(self, a: np.ndarray):
        return self.kernels.to_device(a, self.device)

    def to_host(self, a) -> np.ndarray:
        return self.kernels.to_host(a)


def space_for(x: Any) -> DeviceSpace | None:
    """A DeviceSpace for a torch tensor on a device (CUDA, ROCm, MPS, XPU) or a CuPy array
    (for a CPU tensor while tests make CPU tensors stand in: kernels.use_kernels); None for
    anything else."""
    cupy = K.is_cupy(x)
    torch = sys.modules.get("torch")
    tensor = torch is not None and isinstance(x, torch.Tensor)
    if cupy or (tensor and (x.device.type != "cpu" or K.cpu_stands_in())):
        return DeviceSpace(K.as_tensor(x).device, cupy)
    return None

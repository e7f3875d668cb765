"""Where a collective's vectors live, and the kernels that run there: the memory-space seam.

Each collective (butterfly.py, baselines.py) has one body. It asks :func:`space_for` where
its input lives and does every per-element step through that :class:`Space`: validate,
select, merge, gather, clear residual entries, pack messages. Two spaces exist:

* :data:`HOST` - NumPy arrays in host memory, the C++ kernels of gtopk_mpi._C;
* ``gtopk_mpi.cuda.DeviceSpace`` - torch tensors on a device (CuPy arrays are viewed as
  torch tensors), the device kernels (the custom CUDA kernels, or torch's operations);
  under ``gtopk_mpi.cuda.use_kernels(...)`` (tests) CPU tensors stand in for device memory,
  run by the CUDA kernels on the CPU's SIMT emulator or by torch's operations.

The k-sets and messages of a call on device data live on the host (only the k pairs
cross PCIe, through pinned memory) unless GTOPK_MPI_CUDA_AWARE=1, which keeps them in
device memory and hands device buffers to a CUDA-aware MPI: :func:`message_space`.
:func:`move` carries an array from one space to the other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np

from . import _C, config, cuda, selection
from .topology import HostTree
from .transport import Transport


class Space(Protocol):
    """Arrays of one kind (NumPy, or torch on one device) and the kernels on them.

    Vectors are 1-D; index arrays int32 (int64 for m >= 2^31), ascending; masks bool;
    buffers uint8; dtypes named as NumPy and torch name them ("float32", ...). Kernels:
    ``select`` is the top-min(k, m) of x (of residual + x, residual updated in place,
    when given); ``merge`` the union of two sets summed at equal indices, then its top k
    (symmetric), carrying uint32 tags (OR-ed at equal indices) when given; ``adopt_tags``
    the tags over a later set ``kept`` of the entries ``flags`` marks as coming from ``mine``
    (their tags in ``mine``; 0 for the others); ``encode`` / ``decode`` the wire
    payload of a set (wire.py; ``encode`` returns (payload, index_bytes, scale, packed,
    the values the receiver decodes if ``rounded``)).
    ``allreduce`` returns a new array reduced over the ranks of ``link`` (float16 in
    float32, rounded once); ``scale_average`` divides by p, rounded once (integers:
    floor). ``check`` returns x's dtype name or raises ValueError naming the problem.
    """

    sparse_dtypes: tuple[str, ...]  # value dtypes of the sparse collectives here (kernels and MPI sums)

    def adopt(self, a: Any) -> Any: ...  # a as this space's array type (CuPy viewed as torch)
    def wrap(self, a: Any) -> Any: ...  # a as the caller's array type (back to CuPy)
    def check(self, x: Any, name: str, dtypes: Sequence[str]) -> str: ...
    def dtype_name(self, a: Any) -> str: ...
    def activate(self) -> AbstractContextManager[None]: ...  # the data's device (and caller's stream) current
    def select(self, x: Any, k: int, residual: Any | None) -> tuple[Any, Any]: ...
    def merge(self, ia: Any, va: Any, ib: Any, vb: Any, k: int, ta: Any = None, tb: Any = None) -> tuple: ...
    def encode(self, idx: Any, val: Any, code: int, rounded: bool, pack: int) -> tuple: ...
    def decode(self, body: Any, count: int, packed: bool, index_bytes: int, idx64: bool, code: int, scale: int,
               dtype: str, limit: int) -> tuple[Any, Any]: ...
    def adopt_tags(self, mine: Any, tags: Any, kept: Any, flags: Any) -> Any: ...
    def gather(self, a: Any, ids: Any) -> Any: ...
    def zero_at(self, residual: Any, ids: Any) -> None: ...
    def add_at(self, residual: Any, ids: Any, vals: Any) -> None: ...  # residual[ids] += vals (ids distinct)
    def tags(self, n: int, bits: int) -> Any: ...  # n tags (uint32 on the host) set to bits
    def settle(self, residual: Any, idx: Any, tags: Any, own_bit: int, records: list) -> Any: ...  # see _C.settle
    def to_dense(self, idx: Any, val: Any, m: int) -> Any: ...
    def empty(self, nbytes: int) -> Any: ...
    def empty_set(self) -> tuple[Any, Any]: ...
    def bytes_of(self, a: Any) -> Any: ...  # a uint8 view of a contiguous array
    def view(self, buf: Any, dtype: str) -> Any: ...  # a uint8 buffer seen as dtype
    def concat(self, parts: list[Any]) -> Any: ...
    def ready(self, buf: Any) -> Any: ...  # buf, once the transport may read it (device work done)
    def allreduce(self, link: Transport | HostTree, vals: Any, op: str = "sum") -> Any: ...
    def scale_average(self, vals: Any, p: int) -> Any: ...
    def from_host(self, a: np.ndarray) -> Any: ...
    def to_host(self, a: Any) -> np.ndarray: ...


class HostSpace:
    """NumPy arrays in host memory; the C++ kernels of gtopk_mpi._C."""

    sparse_dtypes: tuple[str, ...] = selection.KERNEL_DTYPES

    def adopt(self, a: Any) -> Any:
        return a

    def wrap(self, a: Any) -> Any:
        return a

    def check(self, x: Any, name: str, dtypes: Sequence[str]) -> str:
        return selection.check_vector(x, name, dtypes)

    def dtype_name(self, a: np.ndarray) -> str:
        return selection.dtype_name(a)

    def activate(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def select(self, x: np.ndarray, k: int, residual: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if residual is not None:
            return selection.select_topk_ef(residual, x, k)
        return selection.select_topk(x, k)

    def merge(self, ia, va, ib, vb, k: int, ta=None, tb=None) -> tuple:
        return _C.merge_topk(ia, va, ib, vb, int(k), ta, tb)

    def encode(self, idx: np.ndarray, val: np.ndarray, code: int, rounded: bool, pack: int) -> tuple:
        return _C.encode_entries(idx, val, code, pack, rounded)

    def decode(self, body: np.ndarray, count: int, packed: bool, index_bytes: int, idx64: bool, code: int,
               scale: int, dtype: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
        return _C.decode_entries(body, count, packed, index_bytes, idx64, code, scale, np.dtype(dtype), limit)

    def adopt_tags(self, mine: np.ndarray, tags: np.ndarray, kept: np.ndarray, flags: np.ndarray) -> np.ndarray:
        return _C.adopt_tags(mine, tags, kept, flags)

    def gather(self, a: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return a[ids]

    def zero_at(self, residual: np.ndarray, ids: np.ndarray) -> None:
        residual[ids] = 0

    def add_at(self, residual: np.ndarray, ids: np.ndarray, vals: np.ndarray) -> None:
        residual[ids] += vals.astype(residual.dtype, copy=False)

    def tags(self, n: int, bits: int) -> np.ndarray:
        return np.full(n, bits, np.uint32)

    def settle(self, residual: np.ndarray, idx: np.ndarray, tags: np.ndarray, own_bit: int, records: list
               ) -> np.ndarray:
        return _C.settle(residual, idx, tags, own_bit, records)

    def to_dense(self, idx: np.ndarray, val: np.ndarray, m: int) -> np.ndarray:
        out = np.zeros(m, val.dtype)
        out[idx] = val
        return out

    def empty(self, nbytes: int) -> np.ndarray:
        return np.empty(nbytes, np.uint8)

    def empty_set(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)

    def bytes_of(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a).view(np.uint8)

    def view(self, buf: np.ndarray, dtype: str) -> np.ndarray:
        return buf.view(np.dtype(dtype))

    def concat(self, parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts)

    def ready(self, buf: np.ndarray) -> np.ndarray:
        return buf

    def allreduce(self, link: Transport | HostTree, vals: np.ndarray, op: str = "sum") -> np.ndarray:
        wide = vals.astype(np.float32) if vals.dtype == np.float16 else np.array(vals, copy=True)
        link.allreduce(wide, op)
        return wide.astype(np.float16) if vals.dtype == np.float16 else wide

    def scale_average(self, vals: np.ndarray, p: int) -> np.ndarray:
        if vals.dtype.kind in "iu":
            return vals // p
        if vals.dtype == np.float16:
            return (vals.astype(np.float32) / np.float32(p)).astype(np.float16)
        return vals / vals.dtype.type(p)

    def from_host(self, a: np.ndarray) -> np.ndarray:
        return a

    def to_host(self, a: np.ndarray) -> np.ndarray:
        return a


HOST = HostSpace()


def space_for(x: Any) -> Space:
    """The space of ``x``: a DeviceSpace for torch device tensors and CuPy arrays, else HOST
    (whose check() then names what is wrong with x)."""
    if isinstance(x, np.ndarray):
        return HOST
    return cuda.space_for(x) or HOST


def message_space(space: Space) -> Space:
    """Where the k-sets and messages of a call on ``space``'s data live: the device itself
    with GTOPK_MPI_CUDA_AWARE=1, else the host."""
    return space if space is HOST or config.CUDA_AWARE.get() else HOST


def move(a: Any, src: Space, dst: Space) -> Any:
    """``a`` (an array of ``src``) as an array of ``dst``: the same object when they are one space."""
    return a if src is dst else dst.from_host(src.to_host(a))


def _implementations(host: HostSpace, device: cuda.DeviceSpace) -> tuple[Space, Space]:
    """Never called: the type checker (mypy, in scripts/test.sh) holds both spaces to the protocol here."""
    return host, device

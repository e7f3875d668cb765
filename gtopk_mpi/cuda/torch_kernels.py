"""The device kernels made of torch's own operations: any torch device, no CUDA toolkit.

What a GPU user gets after a plain ``pip install`` (no nvcc, so no custom CUDA kernels), on
CUDA, ROCm, MPS or XPU tensors alike; ``GTOPK_DEVICE_KERNELS=torch`` selects it even where
the custom kernels are built. Same contract as the CPU kernels (csrc/select.h): exactly
min(k, m) entries by magnitude key (NaN above +inf above every finite value, every NaN one
key), ties to the lower index, indices ascending, values copied bit for bit; the merge sums
at equal indices (a NaN sum as the positive quiet NaN) and is symmetric.

Selection without sorting the vector, every step deterministic on every device:

1. keys: the magnitude's bits as int32 (sign bit cleared; every NaN folded onto one key),
   an order-preserving map of |x| (``view``, ``bitwise_and``, ``where``: elementwise);
2. T, the k-th largest key: ``torch.topk(keys, k).values.min()``. topk's choice among
   tied keys may differ between runs and devices, but the multiset of its values cannot,
   so T is exact;
3. the entries with key > T, plus the first ``k - #(key > T)`` entries with key == T in
   index order: ``nonzero`` lists positions ascending on every device (a stream compaction
   in index order on CUDA), and a boolean mask turned back into positions by ``nonzero``
   gives the indices ascending;
4. values: ``x[idx]`` (a gather copies bits).

The fused error feedback is ``residual.add_(x)`` (one rounding in the residual's dtype, as
the CPU kernel's r + x), then the selection on the residual. Scatter and zeroing are
``index_put_`` at distinct indices (deterministic: no two writes meet). The merge sorts
the 2k indices with a stable sort (a's entry first at equal indices), sums neighbours
with equal index, then selects as above. No atomics, no floating-point reductions.
"""

from __future__ import annotations

import contextlib

import numpy as np


def torch_module():
    import torch

    return torch


# (key mask, +inf's key) per dtype: keys are the magnitude bits, int32
_KEY_BITS = {"float32": (0x7FFFFFFF, 0x7F800000), "float16": (0x7FFF, 0x7C00), "bfloat16": (0x7FFF, 0x7F80)}
_QUIET_NAN = {"float32": 0x7FC00000, "float16": 0x7E00, "bfloat16": 0x7FC0}


def quiet_nan(dtype, device):
    """The positive quiet NaN of ``dtype`` (a 0-d tensor), the merge's one NaN sum."""
    torch = torch_module()
    name = str(dtype).removeprefix("torch.")
    bits = torch.tensor(_QUIET_NAN[name], dtype=torch.int32 if name == "float32" else torch.int16)
    return bits.view(dtype).to(device)


def magnitude_keys(x):
    """int32 keys ordering the entries of float ``x`` by magnitude, every NaN one key above +inf."""
    torch = torch_module()
    name = str(x.dtype).removeprefix("torch.")
    mask, inf = _KEY_BITS[name]
    bits = x.view(torch.int32) if name == "float32" else x.view(torch.int16).to(torch.int32)
    keys = torch.bitwise_and(bits, mask)
    return torch.where(keys > inf, torch.full_like(keys, inf + 1), keys)


def top_positions(keys, k: int):
    """Positions of the k largest ``keys`` (ties to the lower position), ascending, int64."""
    torch = torch_module()
    n = keys.numel()
    if k >= n:
        return torch.arange(n, device=keys.device)
    kth = torch.topk(keys, k, sorted=False).values.min()
    chosen = keys > kth
    short = k - int(chosen.sum())  # how many of the entries tied at the k-th key are taken, lowest first
    tied = torch.nonzero(keys == kth).squeeze(1)[:short]
    chosen[tied] = True
    return torch.nonzero(chosen).squeeze(1)


class TorchKernels:
    """The kernels as torch operations, on tensors of any device (CPU tensors too when forced
    for tests: ``use_kernels("torch")``)."""

    def __init__(self, cpu_stands_in: bool = False):
        self.cpu_stands_in = cpu_stands_in
        self.wants = "a CPU tensor (standing in for device memory)" if cpu_stands_in else "a tensor on a torch device"

    def usable(self) -> None:
        pass

    def accepts(self, t) -> bool:
        return (t.device.type == "cpu") == self.cpu_stands_in

    def device(self, device) -> contextlib.AbstractContextManager:
        torch = torch_module()
        return torch.cuda.device(device) if torch.device(device).type == "cuda" else contextlib.nullcontext()

    def select(self, x, residual, k: int, out_idx, out_val) -> None:
        src = x if residual is None else residual.add_(x)
        idx = top_positions(magnitude_keys(src), min(int(k), src.numel()))
        out_idx.copy_(idx)
        out_val.copy_(src[idx])

    def merge(self, ia, va, ib, vb, k: int, out_idx, out_val) -> int:
        torch = torch_module()
        for name, i in (("first", ia), ("second", ib)):
            if i.numel() > 1 and not bool((i[1:] > i[:-1]).all()):
                raise ValueError(f"merge_topk: {name} indices must be strictly ascending")
        idx, order = torch.sort(torch.cat([ia, ib]), stable=True)
        val = torch.cat([va, vb])[order]
        pair = idx[1:] == idx[:-1]  # entry j and j + 1: a's and b's entry of one index
        if bool(pair.any()):
            at = torch.nonzero(pair).squeeze(1)
            total = val[at] + val[at + 1]
            val[at] = torch.where(torch.isnan(total), quiet_nan(val.dtype, val.device), total)
            keep = torch.ones(idx.numel(), dtype=torch.bool, device=idx.device)
            keep[at + 1] = False
            idx, val = idx[keep], val[keep]
        pos = top_positions(magnitude_keys(val), min(int(k), val.numel()))
        n = pos.numel()
        out_idx[:n] = idx[pos]
        out_val[:n] = val[pos]
        return n

    def scatter(self, idx, val, out) -> None:
        out[idx.long()] = val

    def zero_at(self, idx, residual) -> None:
        residual[idx.long()] = 0

    def to_host(self, t) -> np.ndarray:
        return t.detach().to("cpu", copy=True).numpy()

    def to_device(self, a: np.ndarray, device):
        torch = torch_module()
        return torch.from_numpy(np.ascontiguousarray(a)).to(device, copy=True)  # one copy, CPU or device

    def synchronize(self, t) -> None:
        torch = torch_module()
        kind = t.device.type
        if kind == "cuda":
            torch.cuda.current_stream(t.device).synchronize()
        elif kind == "mps":
            torch.mps.synchronize()
        elif kind == "xpu":
            torch.xpu.synchronize(t.device)

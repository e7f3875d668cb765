"""One reduction of a flat tensor over all ranks, dense or sparse: what hvd.allreduce and
each DistributedOptimizer bucket run on the engine thread.

Result: postscale * reduce(prescale * flat), reduce being Horovod's op (Average divides
the sum by the number of ranks; integers as Horovod does: times 1/n, truncated toward
zero). A Horovod compressor (Compression.none / fp16) wraps a dense reduction; a
SparseCompressor (Compression.gtopk / topk) makes it the sparse collective it names,
with error feedback when an ErrorFeedback state and the layout of its parameters are
given. CPU tensors are reduced as NumPy views, device tensors (CUDA, ROCm, MPS, XPU) on the
GPU path (gtopk_mpi.spaces, gtopk_mpi.cuda).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import spaces
from ..baselines import reduce_agreed
from ..results import CommStats
from ..transport import Transport
from .compression import SparseCompressor
from .error_feedback import ErrorFeedback, Layout

# Reduction ops (Horovod's values)
Average, Sum, Adasum, Min, Max, Product = 0, 1, 2, 3, 4, 5
OP_NAMES = {Average: "AVERAGE", Sum: "SUM", Adasum: "ADASUM", Min: "MIN", Max: "MAX", Product: "PRODUCT"}
_TRANSPORT_OPS = {Average: "sum", Sum: "sum", Min: "min", Max: "max", Product: "prod"}


def scale(t: torch.Tensor, factor: float) -> torch.Tensor:
    if factor == 1.0:
        return t
    if t.dtype.is_floating_point:
        return t * factor
    return (t.double() * factor).to(t.dtype)


def average(t: torch.Tensor, n: int) -> torch.Tensor:
    """Horovod's Average of a sum over n ranks: floats divided; integers scaled by 1/n in
    double and truncated toward zero (Horovod's ScaleBuffer: -3 / 2 -> -1)."""
    return t / n if t.dtype.is_floating_point else (t.double() * (1.0 / n)).to(t.dtype)


def array_of(t: torch.Tensor) -> tuple[spaces.Space, Any]:
    """(space, array) of a tensor: a NumPy view of a CPU tensor, the tensor itself on a device
    (whose space runs the device kernels: gtopk_mpi.cuda)."""
    space = spaces.space_for(t)
    return (space, t) if space is not spaces.HOST else (space, t.numpy())


def _tensor(a: Any) -> torch.Tensor:
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else a


def host_bits(t: torch.Tensor) -> np.ndarray:
    """A NumPy view of a contiguous CPU tensor for ops that move elements without arithmetic
    (NumPy has no bfloat16: a bfloat16 tensor's bits as int16)."""
    return t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def from_host_bits(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """The tensor of what :func:`host_bits` gave (or received) for ``dtype``."""
    t = torch.from_numpy(a)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


def dense(link: Transport, t: torch.Tensor, op: int = Sum) -> torch.Tensor:
    """Horovod's ``op`` over all ranks (Average: the sum) of a flat tensor, in a new tensor."""
    space, arr = array_of(t.contiguous())
    return _tensor(reduce_agreed(link, space, arr, _TRANSPORT_OPS[op]))


def reduce_flat(link: Transport, flat: torch.Tensor, op: int, compression: Any, prescale: float = 1.0,
                postscale: float = 1.0, feedback: tuple[ErrorFeedback, Layout] | None = None
                ) -> tuple[torch.Tensor, CommStats]:
    """postscale * op(prescale * flat) over the ranks of ``link``; also what it cost.

    flat: a 1-D tensor, the same shape and dtype on every rank (the engine has agreed).
    A sparse ``compression`` needs op Sum or Average and a floating dtype; its result has
    at most k nonzeros: the compressor's k (SparseCompressor.k: with min_k set, the training
    paths' floor) of the feedback's scheduled density, else of its own. k >= numel gives
    exactly the dense reduction of residual + flat. bfloat16 is reduced in float32 (sums,
    top-k selection on float32 magnitudes, a float32 residual: a bfloat16 one would round away
    every gradient below 2^-8 of the entry it joins) and returned in bfloat16.
    """
    if flat.dtype == torch.bfloat16:  # in float32 (sums, selection, residuals), the result in bfloat16
        y, stats = reduce_flat(link, flat.float(), op, compression, prescale, postscale, feedback)
        return y.to(torch.bfloat16), stats
    x = scale(flat, prescale)
    stats = CommStats()
    if isinstance(compression, SparseCompressor):
        state, layout = feedback if feedback is not None else (None, ())
        density = state.current_density() if state is not None else compression.density
        k = compression.k(x.numel(), density, x.element_size())
        residual = state.residual(layout, x) if state is not None else None
        if state is not None:
            x = state.compensate(layout, x)
        if k >= x.numel():  # density 1 (or a tiny tensor): bit-identical to the dense reduction
            total = residual + x if residual is not None and bool(residual.any()) else x
            with stats.phase("comm"):
                y = dense(link, total)
            carried = None
        else:
            arr = array_of(x.contiguous())[1]
            res = compression.allreduce(arr, k, None if residual is None else array_of(residual)[1], link)
            y, stats, carried = _tensor(res.to_dense()), res.stats, res.carried
        if state is not None:
            state.sent(layout, carried)
    else:
        c, ctx = compression.compress(x)
        with stats.phase("comm"):
            y = compression.decompress(dense(link, c, op), ctx)
    if op == Average:
        y = average(y, link.size)
    return scale(y, postscale), stats

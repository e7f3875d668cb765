"""Gradient compression for gtopk_mpi.torch, as passed to allreduce(compression=...)
and DistributedOptimizer(compression=...).

``Compression.none`` and ``Compression.fp16`` are Horovod's (a cast around a dense
allreduce). ``Compression.gtopk(density)`` and ``Compression.topk(density)`` are
sparsifiers: the reduction becomes the gTop-k butterfly or the allgather Top-k of
gtopk_mpi (butterfly.py, baselines.py), and the result is a dense tensor with at most k nonzeros.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import config
from ..baselines import topk_allreduce
from ..butterfly import gtopk_allreduce
from ..wire import WIRES
from .density import training_k


class Compressor:
    """Horovod's compressor interface: compress before the dense reduction, decompress after."""

    sparse = False

    @staticmethod
    def compress(tensor: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return tensor, None

    @staticmethod
    def decompress(tensor: torch.Tensor, ctx: Any) -> torch.Tensor:
        return tensor

    @classmethod
    def describe(cls) -> str:
        return cls.__name__


class NoneCompressor(Compressor):
    """No compression: dense and exact."""


class FP16Compressor(Compressor):
    """Cast floating-point tensors to float16 for the reduction and back afterwards."""

    @staticmethod
    def compress(tensor: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if tensor.dtype.is_floating_point and tensor.dtype != torch.float16:
            return tensor.type(torch.float16), tensor.dtype
        return tensor, None

    @staticmethod
    def decompress(tensor: torch.Tensor, ctx: Any) -> torch.Tensor:
        return tensor.type(ctx) if ctx is not None else tensor


@dataclass(frozen=True)
class SparseCompressor:
    """Top-k sparsification of the flattened tensor (k = max(1, ceil(density * numel))).

    algorithm: "gtopk" (butterfly global top-k, O(k log P) per rank) or "topk"
    (allgather of every rank's top-k, O(kP)). values: "merged" or "exact" (gtopk
    only; see gtopk_mpi.gtopk_allreduce). wire: the message format (gtopk_mpi.wire:
    "fp32", "bf16", "fp16", "raw"; default GTOPK_WIRE). Residuals (error feedback) are
    kept by DistributedOptimizer (an ErrorFeedback state); hvd.allreduce with a sparse
    compression returns the sparse sum and keeps no residual. min_k: None (k as above), or
    the training paths' floor (gtopk_mpi.torch.density.training_k: k at least min_k, dense
    where those entries outweigh the values; DistributedOptimizer sets GTOPK_MIN_K).
    """

    algorithm: str = "gtopk"
    density: float = 0.001
    values: str = "merged"
    wire: str = field(default_factory=config.WIRE.get)
    min_k: int | None = None
    sparse = True

    def __post_init__(self) -> None:
        if self.algorithm not in ("gtopk", "topk"):
            raise ValueError(f"algorithm must be 'gtopk' or 'topk', got {self.algorithm!r}")
        if not (0.0 < float(self.density) <= 1.0):
            raise ValueError(f"density must be in (0, 1], got {self.density!r}")
        if self.values not in ("merged", "exact"):
            raise ValueError(f"values must be 'merged' or 'exact', got {self.values!r}")
        if self.wire not in WIRES:
            raise ValueError(f"wire must be one of {', '.join(WIRES)}, got {self.wire!r}")
        if self.min_k is not None and (isinstance(self.min_k, bool) or int(self.min_k) != self.min_k
                                       or self.min_k < 0):
            raise ValueError(f"min_k must be None or an integer >= 0, got {self.min_k!r}")

    def k(self, m: int, density: float | None = None, value_bytes: int = 4) -> int:
        """Entries sent of m elements at ``density`` (default: this compressor's); m: dense."""
        return training_k(m, self.density if density is None else density, value_bytes, self.min_k or 0)

    def allreduce(self, x, k: int, residual, comm):
        """The sparse collective this compressor names, on a 1-D NumPy array or CUDA tensor
        ``x`` (residual alike, or None); returns its SparseResult."""
        wire = self.wire if self.wire == "raw" or str(x.dtype).endswith("float32") else "fp32"  # 16 bits: float32
        if self.algorithm == "gtopk":
            return gtopk_allreduce(x, k=k, residual=residual, values=self.values, comm=comm, wire=wire)
        return topk_allreduce(x, k=k, residual=residual, comm=comm, wire=wire)

    def with_density(self, density: float) -> SparseCompressor:
        return dataclasses.replace(self, density=density)

    def describe(self) -> str:
        floor = "" if self.min_k is None else f", min_k={self.min_k}"
        return f"{self.algorithm}(density={self.density!r}, values={self.values}, wire={self.wire}{floor})"


def description(compressor) -> str:
    """What a request's ``compression`` field says of ``compressor``: "none" for
    Compression.none, else its describe()."""
    return "none" if compressor is NoneCompressor else compressor.describe()


def from_description(text: str):
    """The compressor a request's ``compression`` field names (what describe() wrote), for
    a rank that stands in for an op it did not submit; ValueError for one it cannot rebuild."""
    if text in ("", "none", NoneCompressor.describe()):
        return NoneCompressor
    if text == FP16Compressor.describe():
        return FP16Compressor
    m = re.fullmatch(r"(gtopk|topk)\(density=([^,]+), values=(\w+), wire=(\w+)(?:, min_k=(\d+))?\)", text)
    if m is None:
        raise ValueError(f"a joined rank cannot stand in for an allreduce with compression {text}")
    return SparseCompressor(m[1], float(m[2]), m[3], m[4], None if m[5] is None else int(m[5]))


class Compression:
    """Available compressions: Compression.none, Compression.fp16, Compression.gtopk(...), Compression.topk(...)."""

    none = NoneCompressor
    fp16 = FP16Compressor

    @staticmethod
    def gtopk(density: float = 0.001, values: str = "merged", wire: str | None = None) -> SparseCompressor:
        """Global top-k sparsification (the butterfly gTopKAllReduce); wire default GTOPK_WIRE."""
        return SparseCompressor("gtopk", density, values, wire or config.WIRE.get())

    @staticmethod
    def topk(density: float = 0.001, wire: str | None = None) -> SparseCompressor:
        """Allgather-based Top-k sparsification (the paper's TopKAllReduce baseline)."""
        return SparseCompressor("topk", density, "merged", wire or config.WIRE.get())

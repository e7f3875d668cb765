"""What a collective returns: the sparse result and what the call cost this rank."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .spaces import HOST, Space


@dataclass
class CommStats:
    """What one call cost this rank. Times in seconds; bytes are payload handed to the transport."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    entries_sent: int = 0        # (index, value) pairs in those messages
    port_bytes: int = 0          # of bytes_sent, those to ranks on other hosts (topology.py)
    select_s: float = 0.0        # local top-k (with the fused residual pass)
    comm_s: float = 0.0          # inside the transport (MPI)
    merge_s: float = 0.0         # merges, tag adoption, residual update
    skew_s: float = 0.0          # align=True: waiting at the barrier for slower ranks' selection
    total_s: float = 0.0

    @property
    def bytes_per_entry(self) -> float:
        """Bytes on the wire per (index, value) pair sent, headers included (nan: none sent)."""
        return self.bytes_sent / self.entries_sent if self.entries_sent else float("nan")

    def phase(self, name: str) -> _Phase:
        """A context adding the time spent inside it to ``{name}_s`` (select, comm, merge,
        skew, total)."""
        return _Phase(self, f"{name}_s")


class _Phase:
    """CommStats.phase's context: a plain class, as it runs about ten times per call (a
    generator-based context manager costs several times as much)."""

    __slots__ = ("stats", "attr", "t0")

    def __init__(self, stats: CommStats, attr: str) -> None:
        self.stats, self.attr = stats, attr

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        setattr(self.stats, self.attr, getattr(self.stats, self.attr) + time.perf_counter() - self.t0)


@dataclass(frozen=True)
class SparseResult:
    """A sparse vector of dense length ``size``: ``values`` at ascending ``indices``.

    Arrays live where the collective's input lived: NumPy arrays for NumPy input, tensors
    on the input's device for torch CUDA tensors, CuPy arrays for CuPy input.
    """

    indices: Any
    values: Any
    size: int
    stats: CommStats = field(default_factory=CommStats, compare=False)
    #: this rank's own entries whose full value the result carries (their residual is now 0)
    carried: Any = field(default=None, compare=False)
    space: Space = field(default=HOST, compare=False, repr=False)  # the space the arrays live in

    @property
    def nnz(self) -> int:
        return len(self.indices)

    @property
    def dtype(self):
        return self.values.dtype

    def to_dense(self):
        """The dense vector (zeros outside ``indices``), in the same memory as ``values``."""
        return self.space.to_dense(self.indices, self.values, self.size)

"""Wire format of the sparse collectives' messages.

One message per butterfly round::

    header (48 bytes) | indices (count x int32 or int64) | values (count x dtype) | tail

``tail`` carries, on the last message to a folded rank, that rank's survivor mask
(one byte per entry it contributed). A message whose header has ``error != 0``
carries instead the UTF-8 text of the error (``count`` is then its length in bytes). A
header alone (``count`` 0) is an agreement message: the collectives without pairwise
data agree through the same butterfly of headers. The header lets every receiver check
that both sides run the same call (see agreement.py) before it touches the payload. The
allgather Top-k sends the payload alone (indices | values).

Messages are packed and read in any memory space (spaces.py): only the header (and an
error's text) is ever copied to the host to be read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _C

HEADER = np.dtype(
    [
        ("seq", "<i8"),      # call number on this transport
        ("m", "<i8"),        # dense length
        ("k", "<i8"),        # entries kept per round
        ("count", "<i8"),    # entries in this message (error: text bytes)
        ("rank", "<i4"),     # sender
        ("dtype", "u1"),     # value dtype: gtopk_mpi._C.DType (0: none)
        ("average", "u1"),
        ("values", "u1"),    # VALUE_MODES
        ("error", "u1"),     # agreement.Error code (0: none)
        ("op", "u1"),        # OPS: which collective
        ("align", "u1"),     # align=True (benchmarks): an agreement pass before the data
        ("reserved", "u1", (6,)),
    ]
)
assert HEADER.itemsize == 48

VALUE_MODES = {"merged": 0, "exact": 1}
OPS = {"gtopk_allreduce": 1, "topk_allreduce": 2, "dense_allreduce": 3, "gtopk_tree_allreduce": 4}


def dtype_code(name: str | None) -> int:
    """The header code of a dtype name ("float32", ...): gtopk_mpi._C.DType, 0 for none."""
    member = _C.DType.__members__.get(name) if name else None
    return 0 if member is None else int(member)


def dtype_name(code: int) -> str | None:
    return next((name for name, member in _C.DType.__members__.items() if int(member) == code), None)


def make_header(*, op: str, seq: int, m: int, k: int, count: int, rank: int, dtype: str | None, average: bool,
                values: str, align: bool = False, error: int = 0) -> np.ndarray:
    h = np.zeros(1, HEADER)
    h["op"], h["seq"], h["m"], h["k"], h["count"], h["rank"] = OPS[op], seq, m, k, count, rank
    h["dtype"] = dtype_code(dtype)
    h["average"], h["align"] = bool(average), bool(align)
    h["values"] = VALUE_MODES.get(values, 255)
    h["error"] = error
    return h


def pack(space: Any, *parts: Any) -> Any:
    """One contiguous uint8 buffer in ``space``: the raw bytes of each part (arrays of that
    space, a NumPy header, or bytes), in order."""
    chunks = []
    for p in parts:
        if isinstance(p, bytes):
            chunks.append(space.from_host(np.frombuffer(p, np.uint8)))
        elif isinstance(p, np.ndarray) and p.dtype == HEADER:
            chunks.append(space.from_host(p.view(np.uint8)))
        else:
            chunks.append(space.bytes_of(p))
    return space.concat(chunks)


def header_of(space: Any, buf: Any) -> np.void:
    return space.to_host(buf[: HEADER.itemsize]).view(HEADER)[0]


def split(space: Any, body: Any, count: int, idx_dtype: str, val_dtype: str) -> tuple[Any, Any, Any]:
    """(indices, values, the rest) of a payload of ``count`` entries."""
    ni = count * np.dtype(idx_dtype).itemsize
    nv = count * np.dtype(val_dtype).itemsize
    return space.view(body[:ni], idx_dtype), space.view(body[ni : ni + nv], val_dtype), body[ni + nv :]


def entries(space: Any, buf: Any, count: int, idx_dtype: str, val_dtype: str) -> tuple[Any, Any, Any]:
    """(indices, values, tail) of a message that is not an error."""
    return split(space, buf[HEADER.itemsize :], count, idx_dtype, val_dtype)


def error_text(space: Any, buf: Any) -> str:
    return bytes(space.to_host(buf[HEADER.itemsize :])).decode("utf-8", errors="replace")

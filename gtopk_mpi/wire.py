"""Wire format of the sparse collectives' messages.

One message per butterfly round::

    header (56 bytes) | indices | values | tail

Indices are raw int32/int64 or, when that is smaller (nearly always), packed gaps: blocks
of 32 gaps between consecutive indices, each block in the bit width of its largest gap
(csrc/codec.h; ~12 bits per entry for a ResNet-50 gradient at density 0.001). Values are
raw (the vector's dtype) or, with ``wire="bf16"`` / ``"fp16"`` for float32 vectors, 16
bits each: bfloat16, or float16 after scaling by a power of two 2^scale chosen per
message (no underflow, and the scaling is exact). The header records which encoding
each message uses, so the receiver decodes without guessing.

``tail`` carries, on a message handing the result to a rank that did not compute it (a
folded rank, or a rank waiting inside its host), one flag byte per entry: whether the
entry came from the receiver's own set. A message whose header has ``error != 0`` carries instead
the UTF-8 text of the error (``count`` is then its length in bytes). A header alone
(``count`` 0) is an agreement message: the collectives without pairwise data agree
through the same butterfly of headers. The header lets every receiver check that both
sides run the same call (see agreement.py) before it touches the payload. The allgather
Top-k sends header-less payloads.

Messages are packed and read in any memory space (spaces.py): only the header (and an
error's text) is ever copied to the host to be read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import _C

if TYPE_CHECKING:  # spaces.py imports nothing of the wire, the wire nothing of spaces at run time
    from .spaces import Space

HEADER = np.dtype(
    [
        ("seq", "<i8"),          # call number on this transport
        ("m", "<i8"),            # dense length
        ("k", "<i8"),            # entries kept per round
        ("count", "<i8"),        # entries in this message (error: text bytes)
        ("index_bytes", "<i8"),  # bytes of the indices in this message
        ("rank", "<i4"),         # sender
        ("dtype", "u1"),         # value dtype: gtopk_mpi._C.DType (0: none)
        ("average", "u1"),
        ("values", "u1"),        # VALUE_MODES
        ("error", "u1"),         # agreement.Error code (0: none)
        ("op", "u1"),            # OPS: which collective
        ("align", "u1"),         # align=True (benchmarks): an agreement pass before the data
        ("wire", "u1"),          # WIRES: the value encoding the call asked for
        ("value_code", "u1"),    # VALUE_CODES: this message's values: raw, bfloat16, float16 scaled by 2^scale
        ("packed", "u1"),        # this message's indices: 0 raw, 1 packed gaps
        ("scale", "i1"),
        ("schedule", "u1"),      # SCHEDULES: flat or hierarchical (topology.py)
        ("reserved", "u1"),
    ]
)
assert HEADER.itemsize == 56

VALUE_MODES = {"merged": 0, "exact": 1}
OPS = {"gtopk_allreduce": 1, "topk_allreduce": 2, "dense_allreduce": 3, "gtopk_tree_allreduce": 4}
WIRES = {"fp32": 0, "bf16": 1, "fp16": 2, "raw": 3}  # raw: int32/int64 indices unpacked, values in their dtype
SCHEDULES = {"flat": 0, "hierarchical": 1}


#: a message's value codes (the header's value_code), as csrc/codec.h defines them: raw, bf16, fp16
VALUE_CODES = {name: int(code) for name, code in _C.ValueCode.__members__.items()}
RAW_VALUES = VALUE_CODES["raw"]
_WIRE_NAMES = {code: name for name, code in WIRES.items()}


def codes(wire_code: int, dtype: str) -> tuple[int, int]:
    """(value code, index packing: -1 whichever is smaller, 0 raw) of a data message of a call
    with this wire code: 16-bit values only for float32 vectors."""
    name = _WIRE_NAMES.get(wire_code, "")
    value = VALUE_CODES.get(name, RAW_VALUES) if dtype == "float32" else RAW_VALUES
    return value, 0 if name == "raw" else -1


def dtype_code(name: str | None) -> int:
    """The header code of a dtype name ("float32", ...): gtopk_mpi._C.DType, 0 for none."""
    member = _C.DType.__members__.get(name) if name else None
    return 0 if member is None else int(member)


def dtype_name(code: int) -> str | None:
    return next((name for name, member in _C.DType.__members__.items() if int(member) == code), None)


def make_header(*, op: str, seq: int, m: int, k: int, count: int, rank: int, dtype: str | None, average: bool,
                values: str, align: bool = False, wire: str = "fp32", error: int = 0,
                hierarchical: bool = False) -> np.ndarray:
    h = np.zeros(1, HEADER)
    h["op"], h["seq"], h["m"], h["k"], h["count"], h["rank"] = OPS[op], seq, m, k, count, rank
    h["dtype"] = dtype_code(dtype)
    h["average"], h["align"] = bool(average), bool(align)
    h["values"] = VALUE_MODES.get(values, 255)
    h["wire"] = WIRES.get(wire, 255)
    h["error"], h["schedule"] = error, bool(hierarchical)
    return h


def pack(space: Space, *parts: Any) -> Any:
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


def encode(space: Space, header: np.ndarray, idx: Any, val: Any, code: int, tail: Any = None,
           rounded: bool = False, packing: int = -1) -> tuple[Any, Any, Any]:
    """A data message of the set (idx, val) with values encoded per ``code``: (buffer, and
    when ``rounded`` and the code is lossy, the float32 values the receiver will decode and
    the rounding errors val - decoded, 0 where not finite; else None, None)."""
    payload, index_bytes, scale, packed, back, err = space.encode(idx, val, code, rounded, packing)
    h = header.copy()
    h["count"], h["index_bytes"], h["value_code"], h["packed"], h["scale"] = len(idx), index_bytes, code, packed, scale
    parts = (h, payload) + ((tail,) if tail is not None else ())
    return space.ready(pack(space, *parts)), back, err


def header_of(space: Space, buf: Any) -> np.void:
    return space.to_host(buf[: HEADER.itemsize]).view(HEADER)[0]


def decode(space: Space, buf: Any, h: np.void, idx_dtype: str, val_dtype: str, tail: int = 0) -> tuple[Any, Any, Any]:
    """(indices, values, the last ``tail`` bytes) of a data message whose header is ``h``;
    16-bit values come back as float32. ValueError if the message is malformed."""
    body = buf[HEADER.itemsize :]
    end = len(body) - tail
    idx, val = space.decode(body[:end], int(h["count"]), bool(h["packed"]), int(h["index_bytes"]),
                            idx_dtype == "int64", int(h["value_code"]), int(h["scale"]), val_dtype, int(h["m"]))
    return idx, val, body[end:]


def error_text(space: Space, buf: Any) -> str:
    return bytes(space.to_host(buf[HEADER.itemsize :])).decode("utf-8", errors="replace")

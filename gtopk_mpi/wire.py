"""Wire format of the sparse collectives' messages.

One message per butterfly round::

    header (40 bytes) | indices (count x int32 or int64) | values (count x dtype) | tail

``tail`` carries, on the last message to a folded rank, that rank's survivor mask
(one byte per entry it contributed). A message whose header has ``error != 0``
carries instead the UTF-8 text of the error. The header lets every receiver check
that both sides run the same call (sequence number, dtype, length, k, average,
values mode) before it touches the payload, so a mismatch becomes an error that
travels through the remaining rounds like data, never a hang.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HEADER = np.dtype(
    [
        ("seq", "<i8"),      # call number on this communicator
        ("m", "<i8"),        # dense length
        ("k", "<i8"),        # entries kept per round
        ("count", "<i8"),    # entries in this message
        ("rank", "<i4"),     # sender
        ("dtype", "u1"),     # DTYPE_CODES
        ("average", "u1"),
        ("values", "u1"),    # VALUE_MODES
        ("error", "u1"),     # ERROR_* (0: none)
    ]
)
assert HEADER.itemsize == 40

DTYPE_CODES = {np.dtype(np.float16): 1, np.dtype(np.float32): 2, np.dtype(np.float64): 3,
               np.dtype(np.int32): 4, np.dtype(np.int64): 5}
DTYPE_OF_CODE = {v: k for k, v in DTYPE_CODES.items()}
VALUE_MODES = {"merged": 0, "exact": 1}

ERROR_NONE, ERROR_VALUE, ERROR_MISMATCH = 0, 1, 2

# Fields compared between ranks, in the order a mismatch is reported.
CHECKED_FIELDS = (
    ("seq", "call sequence number"),
    ("dtype", "dtype"),
    ("m", "length"),
    ("k", "k"),
    ("average", "average"),
    ("values", "values mode"),
)


def field_text(field: str, value: int) -> str:
    if field == "dtype":
        dt = DTYPE_OF_CODE.get(int(value))
        return str(dt) if dt is not None else "invalid"
    if field == "values":
        return next((name for name, code in VALUE_MODES.items() if code == value), "invalid")
    if field == "average":
        return str(bool(value))
    return str(int(value))


@dataclass(frozen=True)
class Error:
    """An error that travels with the data. min() of two is the one every rank keeps."""

    code: int
    text: str

    def __lt__(self, other: Error) -> bool:
        return (self.code, self.text) < (other.code, other.text)


def first_mismatch(op: str, headers: np.ndarray) -> Error | None:
    """MismatchError for the first checked field on which ``headers`` (none in error) differ.

    The values are listed sorted, so every rank that sees the same headers, in any
    order (both partners of a butterfly round, or all ranks after an allgather),
    derives the same text.
    """
    for field, label in CHECKED_FIELDS:
        vals = sorted({int(v) for v in headers[field]})
        if len(vals) > 1:
            shown = " vs ".join(field_text(field, v) for v in vals)
            return Error(ERROR_MISMATCH, f"{op}: ranks disagree on the {label}: {shown}")
    return None


def make_header(*, seq: int, m: int, k: int, count: int, rank: int, dtype: np.dtype | None,
                average: bool, values: str, error: int) -> np.ndarray:
    h = np.zeros(1, HEADER)
    h["seq"], h["m"], h["k"], h["count"], h["rank"] = seq, m, k, count, rank
    h["dtype"] = DTYPE_CODES.get(dtype, 0) if dtype is not None else 0
    h["average"] = bool(average)
    h["values"] = VALUE_MODES.get(values, 255)
    h["error"] = error
    return h


def pack(header: np.ndarray, *parts: np.ndarray | bytes) -> np.ndarray:
    """One contiguous uint8 buffer: header followed by the raw bytes of each part."""
    chunks = [header.view(np.uint8)]
    for p in parts:
        chunks.append(np.frombuffer(p, np.uint8) if isinstance(p, bytes) else p.view(np.uint8))
    return np.concatenate(chunks)


def pack_entries(idx: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Header-less (indices, values) payload, as the allgather Top-k sends it."""
    return np.concatenate([idx.view(np.uint8), val.view(np.uint8)])


def split_entries(buf: np.ndarray, count: int, idx_dtype: np.dtype, val_dtype: np.dtype
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of pack_entries."""
    ni = count * idx_dtype.itemsize
    return buf[:ni].view(idx_dtype), buf[ni : ni + count * val_dtype.itemsize].view(val_dtype)


def unpack_header(buf: np.ndarray) -> np.void:
    return buf[: HEADER.itemsize].view(HEADER)[0]


def unpack_entries(buf: np.ndarray, count: int, idx_dtype: np.dtype, val_dtype: np.dtype
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, values, tail bytes) of a non-error message."""
    body = buf[HEADER.itemsize :]
    idx, val = split_entries(body, count, idx_dtype, val_dtype)
    return idx, val, body[idx.nbytes + val.nbytes :]


def error_text(buf: np.ndarray) -> str:
    return bytes(buf[HEADER.itemsize :]).decode("utf-8", errors="replace")

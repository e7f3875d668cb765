"""Agreement between ranks: bad input or disagreeing arguments end the call with the
same error on every rank, never a hang.

A rank whose own arguments break a rule (arguments.py) does not raise at once: it
turns the ValueError into an :class:`Error` and still takes part in every message of
the call. Every message header states the call (which collective, sequence number,
dtype, length, k, average, values mode, align, wire, schedule); a receiver compares its partner's header
with its own. An error travels through the remaining rounds like data, and when two
meet the smaller one wins, so every rank ends holding the same error and raises it in
the same call.

Every collective begins with the same pairwise schedule, the communicator's default
(butterfly.py: flat, or hierarchical when ranks share hosts): the gTop-k butterfly
carries its data in it, the others (dense, allgather Top-k, the tree, gTop-k with
align=True or on the other schedule) send headers alone first. So even ranks that called
different collectives exchange headers, find out, and raise the same MismatchError
instead of waiting on each other forever. Afterwards the transport is in a clean state:
the next call works.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import wire
from .transport import Transport

VALUE_ERROR, MISMATCH = 1, 2  # header "error" codes


class MismatchError(RuntimeError):
    """Ranks called the same collective with arguments that do not agree.

    Raised on every rank of the communicator, in the same call and with the same
    message, which names what differed and the values seen. The communicator stays
    usable: the next call works.
    """


@dataclass(frozen=True)
class Error:
    """An error that travels with the data. min() of two is the one every rank keeps."""

    code: int
    text: str

    def __lt__(self, other: Error) -> bool:
        return (self.code, self.text) < (other.code, other.text)

    def raise_(self) -> None:
        raise (ValueError if self.code == VALUE_ERROR else MismatchError)(self.text)


# Header fields compared between ranks, in the order a mismatch is reported.
CHECKED_FIELDS = (
    ("seq", "call sequence number"),
    ("op", "collective"),
    ("align", "align"),
    ("dtype", "dtype"),
    ("m", "length"),
    ("k", "k"),
    ("average", "average"),
    ("values", "values mode"),
    ("wire", "wire"),
    ("schedule", "schedule"),
)


def _field_text(field: str, value: int) -> str:
    if field == "dtype":
        return wire.dtype_name(value) or "invalid"
    for name, table in (("values", wire.VALUE_MODES), ("op", wire.OPS), ("wire", wire.WIRES),
                        ("schedule", wire.SCHEDULES)):
        if field == name:
            return next((key for key, code in table.items() if code == value), "invalid")
    if field in ("average", "align"):
        return str(bool(value))
    return str(int(value))


def _spans() -> list[tuple[int, int]]:
    """(byte offset, size) of each checked field in a header."""
    fields = wire.HEADER.fields
    assert fields is not None  # a structured dtype
    return [(fields[f][1], fields[f][0].itemsize) for f, _ in CHECKED_FIELDS]


_SPANS = _spans()


def first_mismatch(headers: np.ndarray) -> Error | None:
    """MismatchError for the first checked field on which ``headers`` (none in error) differ.

    The values are listed sorted (and the text starts with the collective of the lowest
    code among them), so every rank that sees the same headers, in any order, derives the
    same text.
    """
    raw, size = headers.tobytes(), headers.dtype.itemsize  # every round checks one: the agreeing case fast
    rows = [raw[i:i + size] for i in range(0, len(raw), size)]
    if all(row[o:o + n] == rows[0][o:o + n] for row in rows[1:] for o, n in _SPANS):
        return None
    op = _field_text("op", int(min(headers["op"])))
    for field, label in CHECKED_FIELDS:
        vals = sorted({int(v) for v in headers[field]})
        if len(vals) > 1:
            shown = " vs ".join(_field_text(field, v) for v in vals)
            return Error(MISMATCH, f"{op}: ranks disagree on the {label}: {shown}")
    return None


def local_error(link: Transport, check: Callable[[], Any]) -> tuple[Error | None, Any]:
    """(None, check()) or, if check raised ValueError, (an Error naming this rank, None)."""
    try:
        return None, check()
    except ValueError as e:
        return Error(VALUE_ERROR, f"rank {link.rank}: {e}"), None

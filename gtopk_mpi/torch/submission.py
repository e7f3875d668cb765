"""How an op gets to the engine: its name (given, or counted per kind and process set), this
rank's local checks, and one submission path that every op of the front end takes.

A local check that fails (a bad dtype, an unknown reduction, splits that do not add up) must
not leave the other ranks waiting on a name this rank never submits: the op is submitted
anyway, as a failed request, and the engine raises the error on every rank (requests.failed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import engine, requests
from .engine import Work, no_run
from .process_sets import ProcessSet, member_set_id
from .requests import OpType, Request

#: (tensor or None, name, group size, set id) -> its Work
WorkOf = Callable[[Any, str, int, int], Work]

_unnamed: dict[tuple[str, int], int] = {}


def op_name(name: str | None, kind: str, process_set: int = 0) -> str:
    """``name``, or a fresh one for an unnamed op: the ranks of a process set number its
    unnamed ops of each kind alike, one counter per (kind, set), so unnamed ops that only
    some ranks issued (on another set, or one that raised on them alone) do not shift the
    names of the others; join() realigns the counters (see unnamed_counts)."""
    if name is not None:
        return name
    n = _unnamed.get((kind, process_set), 0)
    _unnamed[(kind, process_set)] = n + 1
    return f"{kind}.noname.{n}"


def unnamed_counts() -> tuple[tuple[str, int, int], ...]:
    """This rank's unnamed-op counters, for the JOIN request."""
    return tuple((kind, ps, n) for (kind, ps), n in sorted(_unnamed.items()))


def realign_unnamed(reqs: list[Request]) -> None:
    """After every rank joined: each counter to its highest value on any rank, so unnamed
    ops that only the ranks still working issued (and that failed there because others
    had joined) do not leave the ranks' names apart."""
    for r in reqs:
        for kind, ps, n in r.counts:
            _unnamed[(kind, ps)] = max(_unnamed.get((kind, ps), 0), n)


def check_tensor(tensor: torch.Tensor, dtypes: dict) -> None:
    """Horovod's checks of an input: a contiguous torch.Tensor of one of ``dtypes``."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"Expected a torch.Tensor, got {type(tensor).__name__}.")
    if tensor.dtype not in dtypes:
        raise ValueError(f"Tensor type {tensor.type()} is not supported.")
    if not tensor.is_contiguous():
        raise ValueError("Tensor is required to be contiguous.")


def submit_checked(op_type: OpType, names: list[str], build: Callable[[], list[Work]], group: int = 0,
                   process_set: int = 0) -> list[Work]:
    """Submit the works ``build()`` makes for ``names``. If this rank's local checks in it
    raise, submit the names as failed requests instead: the engine then raises that error
    on every rank for them, so no rank waits on one that raised alone."""
    eng = engine.current()
    eng.check_free([(process_set, n) for n in names], op_type)
    try:
        works = build()
    except (ValueError, NotImplementedError) as e:
        works = [Work(requests.failed(n, op_type, e, eng.link.rank, group=group, process_set=process_set), no_run)
                 for n in names]
    return [eng.submit(w) for w in works]


def submit_op(kind: OpType, tensors: Sequence[Any], name: str | None, grouped: bool,
              process_set: ProcessSet, prepare: Callable[[], WorkOf], dtypes: dict | None = None,
              name_kind: str | None = None) -> list[Work]:
    """The one submission path: check this rank is a member of ``process_set``, name the op
    (``name``, or counted per ``name_kind``; a group gets ``{name}.{i}``, one per tensor),
    then, inside the local checks, run ``prepare()`` (op-level checks; returns how to make
    one tensor's Work), check each tensor against ``dtypes`` (None: no tensor checks) and
    submit one Work per tensor. ``tensors``: torch.Tensors, or [None] for an op without one.
    Returns the Works, in tensor order."""
    set_id = member_set_id(process_set, kind.label)
    kind_name = name_kind or kind.value.lower()
    if grouped:
        base = op_name(name, f"grouped_{kind_name}", set_id)
        names = [f"{base}.{i}" for i in range(len(tensors))]
    else:
        names = [op_name(name, kind_name, set_id)]
    group = len(tensors) if grouped else 0

    def build() -> list[Work]:
        work_of = prepare()
        if dtypes is not None:
            for t in tensors:
                check_tensor(t, dtypes)
        return [work_of(t, n, group, set_id) for t, n in zip(tensors, names)]

    return submit_checked(kind, names, build, group, set_id)

"""Horovod's process sets: which ranks an op runs on, and the checks every op makes of its
``process_set=`` argument (registered, this rank a member, the root inside it).

A set is built from global ranks and gets an id when registered (``init(process_sets=...)``
or ``add_process_set``, in mpi_ops.py: collective ops); the engine (engine.py) keeps the
members of each id. Set 0, :data:`global_process_set`, is every rank.
"""

from __future__ import annotations

from collections.abc import Sequence

from mpi4py import MPI

from .. import runtime
from . import engine


class ProcessSet:
    """Horovod's process set: ops with ``process_set=`` run on its ranks only (others neither
    take part nor wait). Build it from a list of ranks, then pass it to ``init(process_sets=
    [...])`` or ``add_process_set`` (needs HOROVOD_DYNAMIC_PROCESS_SETS=1 or
    ``init(process_sets="dynamic")``); ranks are the global ranks, also for root_rank."""

    process_set_id: int | None = None
    ranks: list[int] | None = None
    mpi_comm = None

    def __init__(self, ranks_or_comm: Sequence[int] | MPI.Comm):
        if isinstance(ranks_or_comm, MPI.Comm):
            raise NotImplementedError("Process sets defined by an MPI communicator are not supported by gtopk_mpi; "
                                      "build the process set via a list of ranks.")
        ranks = sorted(ranks_or_comm)
        if any(not isinstance(r, int) for r in ranks):
            raise ValueError("ProcessSet should be initialized with a list of process ranks or an mpi4py Comm object")
        self.ranks = ranks

    def _invalidate(self) -> None:
        self.process_set_id = None

    def size(self) -> int | None:
        """Number of ranks in the set, or None if not initialized."""
        if self.process_set_id is None:
            return None
        return len(members_of(self.process_set_id))

    def rank(self) -> int | None:
        """This rank's index within the set (None if not initialized); ops still take global
        ranks (e.g. root_rank)."""
        if self.process_set_id is None:
            return None
        members = members_of(self.process_set_id)
        if _rank() not in members:
            raise ValueError("Process is not part of provided process set.")
        return members.index(_rank())

    def included(self) -> bool | None:
        """Whether this rank is in the set (None if its ranks are unknown)."""
        if self.ranks is None:
            return None
        return _rank() in self.ranks

    def __str__(self) -> str:
        return f"ProcessSet(process_set_id={self.process_set_id}, ranks={self.ranks}, mpi_comm={self.mpi_comm})"


def _rank() -> int:
    """This rank, as hvd.rank() gives it: Horovod's ValueError before init()."""
    engine.current()
    return runtime.rank()


global_process_set = ProcessSet([])
global_process_set.process_set_id = 0


def members_of(set_id: int) -> tuple[int, ...]:
    """The global ranks of registered set ``set_id``; ValueError if there is none."""
    members = engine.current().members(set_id)
    if members is None:
        raise ValueError("Process set does not exist or has not been registered.")
    return members


def registered(process_set: ProcessSet) -> tuple[int, tuple[int, ...]]:
    """(id, ranks) of a registered ``process_set``; ValueError if it is not one."""
    if not isinstance(process_set, ProcessSet):
        raise ValueError(f"process_set must be a ProcessSet, got {type(process_set).__name__}")
    set_id = process_set.process_set_id
    members = None if set_id is None else engine.current().members(set_id)
    if set_id is None or members is None:
        raise ValueError(f"{process_set} has not been registered: pass it to init(process_sets=[...]) or "
                         "add_process_set() first.")
    return set_id, members


def member_set_id(process_set: ProcessSet, op: str) -> int:
    """The id of ``process_set`` for an op of this rank; ValueError if it is not registered or
    this rank is not in it (then no other rank waits: the op is this rank's alone)."""
    set_id, members = registered(process_set)
    if _rank() not in members:
        raise ValueError(f"{op}: Rank {_rank()} is not a member of the provided process set.")
    return set_id


def root_index(root_rank: int, members: tuple[int, ...]) -> int:
    """Where global ``root_rank`` is among ``members``; ValueError if it is not one of them."""
    if root_rank not in members:
        raise ValueError(f"root_rank {root_rank} is not a member of the process set {list(members)}")
    return members.index(root_rank)

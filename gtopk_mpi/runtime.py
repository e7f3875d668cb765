"""The MPI runtime: which communicator the collectives run on, and who we are in it.

gtopk_mpi never opens a transport of its own: every byte goes through MPI (mpi4py),
behind the Transport seam of transport.py. ``init`` duplicates the user's communicator
so library traffic can never match the user's own messages, and finds which ranks
share a host (topology.py).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from dataclasses import dataclass

from mpi4py import MPI

from . import _C, config, failures
from . import transport as _transport
from .topology import Topology


@dataclass
class _State:
    link: _transport.Transport  # the default Transport of the collectives
    comm: MPI.Comm | None   # its private MPI communicator (None: a Transport given to init)
    layout: Topology        # its hosts, local and cross-host transports


_state: _State | None = None
_heap_tuned = False


def _keep_heap_pages() -> None:
    """Once per process, before the first collective: glibc gives freed memory back to the
    kernel (blocks from its mmap threshold up are unmapped, the heap's top is trimmed past its
    trim threshold), and its own adjustment of those thresholds lags the sizes a collective
    allocates and frees on every call, so their pages were faulted in again each time (at
    P = 2 here: 116 page faults per call on a ResNet-50-sized gradient, 50 with m = 102,232
    and k = 25,558; 0.6 and 0.3 with these settings). GTOPK_MALLOC_TUNE sets both thresholds
    to where glibc's adjustment tops out; a user's own MALLOC_* settings win."""
    global _heap_tuned
    if not _heap_tuned:
        _heap_tuned = True
        mine = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
        if config.MALLOC_TUNE.get() and not any(v in os.environ for v in mine):
            _C.malloc_keep(32 << 20, 64 << 20)


def start_mpi() -> None:
    """Initialize MPI (thread level MULTIPLE, as mpi4py would) unless it is running. gtopk_mpi
    imports mpi4py without starting MPI (see the package docstring); whatever first needs MPI
    calls this. MPI is finalized at exit, as when mpi4py starts it at import."""
    if not MPI.Is_initialized():
        MPI.Init_thread(MPI.THREAD_MULTIPLE)
        atexit.register(_finalize_mpi)


def _finalize_mpi() -> None:
    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.Finalize()


def init(comm: MPI.Comm | Sequence[int] | _transport.Transport | None = None) -> None:
    """Start gtopk_mpi on ``comm`` (default ``MPI.COMM_WORLD``). Idempotent.

    ``comm`` may be an mpi4py intracommunicator or a list of ranks of
    ``MPI.COMM_WORLD``; with a list, every listed rank must call ``init`` with the
    same list (unlisted ranks need not call it; if they do, ValueError). It may also be a
    Transport, e.g. ``gtopk_mpi.torch.dist_transport.DistTransport()`` under torchrun: the
    collectives then run on it and MPI is not used. Every rank must set the same
    GTOPK_HIERARCHICAL and GTOPK_RANKS_PER_HOST (else ValueError everywhere).
    """
    global _state
    if _state is not None:
        return
    _keep_heap_pages()
    if comm is not None and not isinstance(comm, (MPI.Comm, Sequence)):
        _state = _State(link=comm, comm=None, layout=comm.topology())
        return
    start_mpi()
    created: MPI.Comm | None = None
    base: MPI.Comm
    if comm is None:
        base = MPI.COMM_WORLD
    elif isinstance(comm, MPI.Comm):
        base = comm
    else:
        ranks = [int(r) for r in comm]
        world = MPI.COMM_WORLD
        if world.Get_rank() not in ranks:
            raise ValueError(f"init(comm={ranks}): world rank {world.Get_rank()} is not in the list")
        group = world.Get_group().Incl(ranks)
        base = created = world.Create_group(group, tag=0x67)
        group.Free()
    dup = base.Dup()
    if created is not None:
        created.Free()
    failures.start(dup)
    link = _transport.for_comm(dup)
    try:
        layout = link.topology()
    except ValueError:
        failures.stop()
        _transport.forget(dup, free=False)
        dup.Free()
        raise
    _state = _State(link=link, comm=dup, layout=layout)


def shutdown() -> None:
    """Release the library's communicators (collective: every rank calls it). ``init`` may be
    called again afterwards."""
    global _state
    if _state is None:
        return
    if _state.comm is None:
        _state.link.close()
        _state = None
        return
    failures.stop()
    free = not MPI.Is_finalized() and not failures.abandoned()  # after a rank left, freeing would wait on it
    _transport.forget(_state.comm, free)
    if free:
        _state.comm.Free()
    _state = None


def is_initialized() -> bool:
    return _state is not None


def state() -> _State:
    """The live runtime state; raises ValueError before ``init``."""
    if _state is None:
        raise ValueError("gtopk_mpi has not been initialized; call gtopk_mpi.init() first")
    return _state


def comm() -> MPI.Comm:
    """The library's private communicator (a duplicate of the one given to init); ValueError
    when init was given a Transport."""
    c = state().comm
    if c is None:
        raise ValueError("gtopk_mpi was initialized on a Transport, not an MPI communicator")
    return c


def rank() -> int:
    return state().link.rank


def size() -> int:
    return state().link.size


def local_rank() -> int:
    """Rank among the processes on this host."""
    return state().layout.local.rank


def local_size() -> int:
    """Number of processes on this host."""
    return state().layout.local.size


def cross_rank() -> int:
    """Index of this rank among the ranks with its local rank (its host's index)."""
    return state().layout.cross.rank


def cross_size() -> int:
    """Number of ranks with this rank's local rank (the hosts, when all hold as many ranks)."""
    return state().layout.cross.size


def layout() -> Topology:
    """Which ranks share a host, and the default gTop-k schedule (see topology.py)."""
    return state().layout


def transport(comm: MPI.Comm | _transport.Transport | None = None) -> _transport.Transport:
    """What a collective runs on: ``comm`` as given (an mpi4py communicator, or any
    Transport), default the communicator given to init()."""
    _keep_heap_pages()
    if comm is None:
        return state().link
    if isinstance(comm, MPI.Comm):
        return _transport.for_comm(comm)
    return comm

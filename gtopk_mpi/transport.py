"""How the collectives exchange bytes: one small seam, implemented today over MPI.

The algorithms (butterfly.py, baselines.py, the torch engine) never call MPI
directly; they hold a :class:`Transport` and use only its methods: one message to or
from one peer, the paired exchange of a butterfly round, in-place allreduce and
broadcast of a buffer, allgather of equal-size buffers, and allgather / broadcast of
small picklable objects (headers, errors, requests). A second transport (e.g.
torch.distributed for torchrun users) implements the same protocol and nothing else
changes.

Buffers are contiguous NumPy arrays, or device tensors when the MPI is CUDA-aware.
``alloc(nbytes)`` callbacks let the caller choose where a received message lives.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from mpi4py import MPI

from . import config

Alloc = Callable[[int], Any]
_OPS = {"sum": MPI.SUM, "min": MPI.MIN, "max": MPI.MAX, "prod": MPI.PROD}
TAG = 0x6770


class Transport(Protocol):
    """What a collective may ask of the ranks it runs on. ``next_sequence`` numbers the
    calls (every rank counts alike; checked in message headers); ``recv`` takes the next
    message from ``source`` into ``alloc(nbytes)``; ``sendrecv`` is one butterfly round;
    ``allreduce`` (op: sum, min, max, prod) and ``bcast`` work in place; ``allgather``
    concatenates every rank's equal-size byte buffer in rank order, ``allgatherv`` every
    rank's counts[rank] elements into ``out``."""

    rank: int
    size: int

    def next_sequence(self) -> int: ...
    def send(self, buf: Any, dest: int) -> None: ...
    def recv(self, source: int, alloc: Alloc) -> Any: ...
    def sendrecv(self, buf: Any, peer: int, alloc: Alloc) -> Any: ...
    def allreduce(self, buf: Any, op: str = "sum") -> None: ...
    def allgather(self, buf: Any, alloc: Alloc) -> Any: ...
    def allgatherv(self, buf: Any, counts: list[int], out: Any) -> None: ...
    def bcast(self, buf: Any, root: int) -> None: ...
    def allgather_obj(self, obj: Any) -> list[Any]: ...
    def bcast_obj(self, obj: Any, root: int) -> Any: ...
    def barrier(self) -> None: ...


class MpiTransport:
    """The Transport over an mpi4py intracommunicator (messages tagged TAG).

    Waiting for a partner: MPI's blocking calls busy-poll a core. With more ranks than
    cores (oversubscribed test and benchmark machines) that starves the very rank being
    waited for, so by default (GTOPK_YIELD=1) we poll and yield the core between polls.
    """

    def __init__(self, comm: MPI.Comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self._sequence = 0
        self._yield = config.YIELD.get()

    def next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    def _probe(self, source: int) -> tuple[MPI.Message, int]:
        status = MPI.Status()
        if self._yield:
            while (msg := self.comm.Improbe(source=source, tag=TAG, status=status)) is None:
                os.sched_yield()
        else:
            msg = self.comm.Mprobe(source=source, tag=TAG, status=status)
        return msg, status.Get_count(MPI.BYTE)

    def _complete(self, req: MPI.Request) -> None:
        if self._yield:
            while not req.Test():
                os.sched_yield()
        else:
            req.Wait()

    def _receive(self, source: int, alloc: Alloc) -> Any:
        msg, nbytes = self._probe(source)
        buf = alloc(nbytes)
        msg.Recv([buf, MPI.BYTE])
        return buf

    def send(self, buf: Any, dest: int) -> None:
        self._complete(self.comm.Isend([buf, MPI.BYTE], dest=dest, tag=TAG))

    def recv(self, source: int, alloc: Alloc) -> Any:
        return self._receive(source, alloc)

    def sendrecv(self, buf: Any, peer: int, alloc: Alloc) -> Any:
        req = self.comm.Isend([buf, MPI.BYTE], dest=peer, tag=TAG)
        out = self._receive(peer, alloc)
        self._complete(req)
        return out

    def allreduce(self, buf: Any, op: str = "sum") -> None:
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=_OPS[op])

    def allgather(self, buf: Any, alloc: Alloc) -> Any:
        out = alloc(self.size * len(buf))
        self.comm.Allgather([buf, MPI.BYTE], [out, MPI.BYTE])
        return out

    def allgatherv(self, buf: Any, counts: list[int], out: Any) -> None:
        self.comm.Allgatherv(buf, [out, counts])

    def bcast(self, buf: Any, root: int) -> None:
        self.comm.Bcast(buf, root=root)

    def allgather_obj(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)

    def bcast_obj(self, obj: Any, root: int) -> Any:
        return self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()


_transports: dict[int, MpiTransport] = {}


def for_comm(comm: MPI.Comm) -> MpiTransport:
    """The transport of an mpi4py communicator (one per communicator, so call numbers persist)."""
    key = comm.py2f()
    link = _transports.get(key)
    if link is None or link.comm != comm:
        link = _transports[key] = MpiTransport(comm)
    return link


def forget(comm: MPI.Comm) -> None:
    """Drop the transport of a communicator about to be freed."""
    _transports.pop(comm.py2f(), None)

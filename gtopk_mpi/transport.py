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

import logging
import os
import pickle
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

import numpy as np
from mpi4py import MPI

from . import config, failures, topology

Alloc = Callable[[int], Any]
_OPS = {"sum": MPI.SUM, "min": MPI.MIN, "max": MPI.MAX, "prod": MPI.PROD}
TAG = 0x6770
IDLE_SPIN, IDLE_SLEEP_S = 64, 50e-6  # an idle wait: polls before sleeping, then the sleep between polls

log = logging.getLogger(__name__)


class Transport(Protocol):
    """What a collective may ask of the ranks it runs on. ``next_sequence`` numbers the
    calls (every rank counts alike; checked in message headers); ``recv`` takes the next
    message from ``source`` into ``alloc(nbytes)``; ``sendrecv`` is one butterfly round;
    ``allreduce`` (op: sum, min, max, prod) and ``bcast`` work in place; ``allgather``
    concatenates every rank's byte buffer in rank order and returns it with the sizes,
    ``allgatherv`` every rank's counts[rank] elements into ``out``; ``topology`` the host
    layout and the transports inside a host and across hosts (topology.py), which it builds
    with ``host_color`` (equal on ranks that share a host) and ``split`` (a transport over
    the ranks passing the same color; None for a rank passing None). ``activity`` names the
    call in progress in stall warnings."""

    rank: int
    size: int
    world_ranks: list[int]  # the job's rank of each member (a split transport's too)
    activity: str

    def next_sequence(self) -> int: ...
    def send(self, buf: Any, dest: int) -> None: ...
    def recv(self, source: int, alloc: Alloc, idle: bool = False) -> Any: ...  # idle: a long wait (see MpiTransport)
    def sendrecv(self, buf: Any, peer: int, alloc: Alloc) -> Any: ...
    def allreduce(self, buf: Any, op: str = "sum") -> None: ...
    def allgather(self, buf: Any, alloc: Alloc) -> tuple[Any, list[int]]: ...
    def allgatherv(self, buf: Any, counts: list[int], out: Any) -> None: ...
    def bcast(self, buf: Any, root: int) -> None: ...
    def allgather_obj(self, obj: Any) -> list[Any]: ...
    def bcast_obj(self, obj: Any, root: int) -> Any: ...
    def barrier(self) -> None: ...
    def host_color(self) -> int: ...
    def split(self, color: int | None) -> Transport | None: ...
    def topology(self) -> topology.Topology: ...  # which ranks share a host (collective on first use)
    def close(self) -> None: ...  # collective: release what the transport holds


class EngineTransport(Transport, Protocol):
    """A Transport the torch engine runs on (gtopk_mpi.torch.engine): it also takes whichever
    message is waiting from any rank (``probe_any``: (source, buf), or None; negotiation), and
    has Horovod's reducescatter and alltoall (``reduce_scatter``: the sum of every rank's
    ``buf``, this rank's counts[rank] elements of it into ``out``; ``alltoallv``: send_counts[j]
    bytes of ``buf`` to rank j, recv_counts[j] from rank j into ``out``, in rank order)."""

    def probe_any(self, alloc: Alloc) -> tuple[int, Any] | None: ...
    def reduce_scatter(self, buf: Any, counts: list[int], out: Any, op: str = "sum") -> None: ...
    def alltoallv(self, buf: Any, send_counts: list[int], out: Any, recv_counts: list[int]) -> None: ...
    def split(self, color: int | None) -> EngineTransport | None: ...


def poll(ready: Callable[[], Any], link: Transport, who: str, gone: Callable[[], str | None] = lambda: None,
         idle: bool = False, end_job: Callable[[str], None] = failures.end_job) -> Any:
    """Poll ``ready()`` until it returns something other than None or False, for a wait of
    ``link`` (its rank, activity and GTOPK_YIELD setting) on ``who``: between polls yield the
    core (with ``idle``, sleep IDLE_SLEEP_S after the first IDLE_SPIN polls); now and then
    ask ``gone()`` whether a rank left (then PeerGoneError), warn once after
    GTOPK_STALL_CHECK_TIME_SECONDS and call ``end_job`` past GTOPK_STALL_SHUTDOWN_TIME_SECONDS."""
    out = ready()
    if out:
        return out
    t0, polls, warned = time.monotonic(), 0, False
    warn_s, end_s = failures.stall_limits()
    yielding = config.YIELD.get()
    while not (out := ready()):
        if yielding:
            if idle and polls >= IDLE_SPIN:
                time.sleep(IDLE_SLEEP_S)
            else:
                os.sched_yield()
        polls += 1
        if polls % 256:
            continue
        why = gone()
        if why:
            raise failures.abandon(f"gtopk_mpi: rank {link.rank}: {link.activity} waited on {who}, but {why}", why)
        waited = time.monotonic() - t0
        if warn_s and waited > warn_s and not warned:
            warned = True
            log.warning("gtopk_mpi: rank %s: %s has waited %.0f s for %s (a rank is late, skipped a call, or "
                        "called another collective)", link.rank, link.activity, waited, who)
        if end_s and waited > end_s:
            end_job(f"gtopk_mpi: rank {link.rank}: {link.activity} stalled {waited:.0f} s waiting for {who} "
                    "(GTOPK_STALL_SHUTDOWN_TIME_SECONDS); ending the job")
    return out


class Numbered:
    """What every transport keeps alike: the call numbers, the activity named in wait
    messages and the topology found on first use (``topology.discover``: collective)."""

    def __init__(self) -> None:
        self.activity = "a collective"
        self._sequence = 0
        self._topology: topology.Topology | None = None

    def next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    def topology(self) -> topology.Topology:
        if self._topology is None:
            self._topology = topology.discover(cast(Transport, self))  # every subclass is a Transport
        return self._topology


class MpiTransport(Numbered):
    """The Transport over an mpi4py intracommunicator (messages tagged TAG).

    Every wait is a poll loop over non-blocking MPI calls, never a blocking one, so that a
    wait can notice a rank that left (failures.PeerGoneError), warn when it stalls, and
    end the job past GTOPK_STALL_SHUTDOWN_TIME_SECONDS. Between polls it yields the core
    (GTOPK_YIELD=1, the default): with more ranks than cores, spinning starves the very
    rank being waited for; a receive marked ``idle`` (a rank waiting while others run the
    rounds it waits for, e.g. the hierarchical schedule's hand-down) sleeps between polls
    after a short spin. ``activity`` names the call in progress for those messages.
    """

    def __init__(self, comm: MPI.Comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.world_ranks = comm.Get_group().Translate_ranks(list(range(self.size)), MPI.COMM_WORLD.Get_group())
        super().__init__()

    def _poll(self, ready: Callable[[], Any], peer: int | None, idle: bool = False) -> Any:
        who = f"rank {peer}" if peer is not None else "the other ranks"
        return poll(ready, self, who, lambda: failures.gone(None if peer is None else [self.world_ranks[peer]]), idle)

    def _wait(self, req: MPI.Request, peer: int | None = None) -> None:
        self._poll(req.Test, peer)

    def _receive(self, source: int, alloc: Alloc, idle: bool = False) -> Any:
        status = MPI.Status()
        msg = self._poll(lambda: self.comm.Improbe(source=source, tag=TAG, status=status), source, idle)
        buf = alloc(status.Get_count(MPI.BYTE))
        msg.Recv([buf, MPI.BYTE])
        return buf

    def send(self, buf: Any, dest: int) -> None:
        self._wait(self.comm.Isend([buf, MPI.BYTE], dest=dest, tag=TAG), dest)

    def recv(self, source: int, alloc: Alloc, idle: bool = False) -> Any:
        return self._receive(source, alloc, idle)

    def probe_any(self, alloc: Alloc) -> tuple[int, Any] | None:
        status = MPI.Status()
        msg = self.comm.Improbe(source=MPI.ANY_SOURCE, tag=TAG, status=status)
        if msg is None:
            return None
        buf = alloc(status.Get_count(MPI.BYTE))
        msg.Recv([buf, MPI.BYTE])
        return status.Get_source(), buf

    def sendrecv(self, buf: Any, peer: int, alloc: Alloc) -> Any:
        req = self.comm.Isend([buf, MPI.BYTE], dest=peer, tag=TAG)
        out = self._receive(peer, alloc)
        self._wait(req, peer)
        return out

    def allreduce(self, buf: Any, op: str = "sum") -> None:
        self._wait(self.comm.Iallreduce(MPI.IN_PLACE, buf, op=_OPS[op]))

    def allgather(self, buf: Any, alloc: Alloc) -> tuple[Any, list[int]]:
        sizes = np.zeros(self.size, np.int64)
        self._wait(self.comm.Iallgather(np.array([len(buf)], np.int64), sizes))
        out = alloc(int(sizes.sum()))
        counts = [int(n) for n in sizes]
        self._wait(self.comm.Iallgatherv([buf, MPI.BYTE], [out, counts, MPI.BYTE]))
        return out, counts

    def allgatherv(self, buf: Any, counts: list[int], out: Any) -> None:
        self._wait(self.comm.Iallgatherv(buf, [out, counts]))

    def bcast(self, buf: Any, root: int) -> None:
        self._wait(self.comm.Ibcast(buf, root=root), root)

    def reduce_scatter(self, buf: Any, counts: list[int], out: Any, op: str = "sum") -> None:
        """``op`` over all ranks of ``buf``; rank j gets elements counts[j] (in rank order) into
        ``out``. Used by the torch front end's reducescatter (MPI only)."""
        self._wait(self.comm.Ireduce_scatter(buf, out, list(counts), op=_OPS[op]))

    def alltoallv(self, buf: Any, send_counts: list[int], out: Any, recv_counts: list[int]) -> None:
        """Bytes send_counts[j] of ``buf`` (in order) to rank j, recv_counts[j] from rank j into
        ``out`` (in rank order). Used by the torch front end's alltoall (MPI only)."""
        sdispl = np.concatenate([[0], np.cumsum(send_counts)[:-1]]).astype(np.int64).tolist()
        rdispl = np.concatenate([[0], np.cumsum(recv_counts)[:-1]]).astype(np.int64).tolist()
        self._wait(self.comm.Ialltoallv([buf, (list(send_counts), sdispl), MPI.BYTE],
                                        [out, (list(recv_counts), rdispl), MPI.BYTE]))

    def allgather_obj(self, obj: Any) -> list[Any]:
        out, sizes = self.allgather(np.frombuffer(pickle.dumps(obj), np.uint8), lambda n: np.empty(n, np.uint8))
        ends = np.cumsum(sizes)
        return [pickle.loads(out[e - n : e].tobytes()) for n, e in zip(sizes, ends)]

    def bcast_obj(self, obj: Any, root: int) -> Any:
        data = np.frombuffer(pickle.dumps(obj), np.uint8) if self.rank == root else None
        size = np.array([0 if data is None else data.size], np.int64)
        self.bcast(size, root)
        buf = data.copy() if data is not None else np.empty(int(size[0]), np.uint8)
        self.bcast(buf, root)
        return obj if self.rank == root else pickle.loads(buf.tobytes())

    def barrier(self) -> None:
        self._wait(self.comm.Ibarrier())

    def host_color(self) -> int:
        """The lowest rank of this rank's shared-memory node (collective)."""
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        lowest = node.Get_group().Translate_ranks([0], self.comm.Get_group())[0]
        node.Free()
        return lowest

    def split(self, color: int | None) -> MpiTransport | None:
        """A transport over the ranks of this color, in rank order (collective); None for None."""
        sub = self.comm.Split(MPI.UNDEFINED if color is None else color, key=self.rank)
        return None if sub == MPI.COMM_NULL else MpiTransport(sub)

    def close(self) -> None:
        """Collective: free the communicator and those of its topology."""
        if self._topology is not None:
            self._topology.close()
        self.comm.Free()


_transports: dict[int, MpiTransport] = {}


def for_comm(comm: MPI.Comm) -> MpiTransport:
    """The transport of an mpi4py communicator (one per communicator, so call numbers persist)."""
    key = comm.py2f()
    link = _transports.get(key)
    if link is None or link.comm != comm:
        link = _transports[key] = MpiTransport(comm)
    return link


def forget(comm: MPI.Comm, free: bool = True) -> None:
    """Drop the transport of a communicator about to be freed, and with ``free`` (collective)
    free its topology's communicators."""
    link = _transports.pop(comm.py2f(), None)
    if free and link is not None and link._topology is not None:
        link._topology.close()

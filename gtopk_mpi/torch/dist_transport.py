"""The collectives' Transport over torch.distributed, for jobs launched by torchrun without MPI.

Every collective of gtopk_mpi (the butterfly, the baselines, the DDP hook) holds a Transport
(gtopk_mpi/transport.py); this one implements it with torch.distributed on a process group:
gloo for buffers in host memory (NumPy arrays or CPU tensors), NCCL for CUDA tensors (then
the collectives' messages must live in device memory: GTOPK_MPI_CUDA_AWARE=1; written for
NCCL, checked only where a GPU exists). Point-to-point messages carry no size in
torch.distributed, so each message is two: its length (one int64), then its bytes (none
for an empty message: gloo cannot send zero elements). Collectives are waited for by
polling ``is_completed()`` like the MPI transport (stall warnings); sends and receives
complete only inside gloo's blocking ``wait()``, bounded by GTOPK_STALL_SHUTDOWN_TIME_SECONDS
when set (else the group's timeout). A stall past it ends this process; torchrun then
stops the others.

Hosts (``topology()``): ranks with the same host name (or GTOPK_RANKS_PER_HOST); groups for
them come from ``dist.new_group``, which every rank of the default group must enter, so the
group given here must be the whole job (the default group or one of all its ranks).
"""

from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .. import failures
from ..transport import Alloc, EngineTransport, MpiTransport, Numbered, Transport, poll

TAG = 0x6770
_OPS = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX, "prod": dist.ReduceOp.PRODUCT}


def _end_job(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    os._exit(1)


class DistTransport(Numbered):
    """The Transport over a torch.distributed process group (default: the default group)."""

    def __init__(self, group: Any = None):
        if not dist.is_initialized():
            raise ValueError("DistTransport needs torch.distributed initialized (dist.init_process_group, or torchrun "
                             "and init_process_group())")
        self.group = group
        self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)
        self.world_ranks = [r if group is None else dist.get_global_rank(group, r) for r in range(self.size)]
        self.device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else None
        super().__init__()

    def _tensor(self, buf: Any) -> torch.Tensor:
        return torch.from_numpy(buf) if isinstance(buf, np.ndarray) else buf

    def _wait(self, work: Any, peer: int | None = None, idle: bool = False) -> None:
        """Wait for a collective's work: polling, as the MPI transport waits."""
        who = f"rank {peer}" if peer is not None else "the other ranks"
        poll(work.is_completed, self, who, idle=idle, end_job=_end_job)
        work.wait()  # raises the op's error, if any

    def _wait_p2p(self, work: Any, peer: int) -> None:
        """Wait for a send or receive: gloo completes those only inside wait(), so block, for at
        most GTOPK_STALL_SHUTDOWN_TIME_SECONDS when set (then end this process; torchrun stops
        the others), else the group's timeout."""
        _, end_s = failures.stall_limits()
        try:
            work.wait(timedelta(seconds=end_s)) if end_s else work.wait()
        except RuntimeError as e:
            if end_s:
                _end_job(f"gtopk_mpi: rank {self.rank}: {self.activity} stalled waiting for rank {peer} ({e}); "
                         "ending the job")
            raise

    def _post_send(self, buf: Any, dest: int) -> list[Any]:
        n = torch.tensor([buf.nbytes if isinstance(buf, np.ndarray) else buf.numel()], dtype=torch.int64)
        if self.device is not None:
            n = n.to(self.device)
        works = [dist.isend(n, self.world_ranks[dest], group=self.group, tag=TAG)]
        if int(n[0]):
            works.append(dist.isend(self._tensor(buf), self.world_ranks[dest], group=self.group, tag=TAG))
        return works

    def send(self, buf: Any, dest: int) -> None:
        for work in self._post_send(buf, dest):
            self._wait_p2p(work, dest)

    def recv(self, source: int, alloc: Alloc, idle: bool = False) -> Any:
        n = torch.zeros(1, dtype=torch.int64, device=self.device)
        self._wait_p2p(dist.irecv(n, self.world_ranks[source], group=self.group, tag=TAG), source)
        buf = alloc(int(n[0]))
        if int(n[0]):
            self._wait_p2p(dist.irecv(self._tensor(buf), self.world_ranks[source], group=self.group, tag=TAG), source)
        return buf

    def sendrecv(self, buf: Any, peer: int, alloc: Alloc) -> Any:
        sends = self._post_send(buf, peer)
        out = self.recv(peer, alloc)
        for work in sends:
            self._wait_p2p(work, peer)
        return out

    def allreduce(self, buf: Any, op: str = "sum") -> None:
        if len(buf):
            self._wait(dist.all_reduce(self._tensor(buf), op=_OPS[op], group=self.group, async_op=True))

    def _sizes(self, n: int) -> list[int]:
        sizes = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.size)]
        mine = torch.tensor([n], dtype=torch.int64, device=self.device)
        self._wait(dist.all_gather(sizes, mine, group=self.group, async_op=True))
        return [int(v[0]) for v in sizes]

    def _gather_padded(self, t: torch.Tensor, counts: list[int], out: torch.Tensor) -> None:
        """out = every rank's first counts[q] elements of t, in rank order (gloo gathers equal sizes)."""
        width = max(counts)
        if width == 0:
            return
        padded = torch.zeros(width, dtype=t.dtype, device=t.device)
        padded[: len(t)] = t
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        self._wait(dist.all_gather(parts, padded, group=self.group, async_op=True))
        at = 0
        for part, n in zip(parts, counts):
            out[at : at + n] = part[:n]
            at += n

    def allgather(self, buf: Any, alloc: Alloc) -> tuple[Any, list[int]]:
        counts = self._sizes(len(buf))
        out = alloc(sum(counts))
        self._gather_padded(self._tensor(buf), counts, self._tensor(out))
        return out, counts

    def allgatherv(self, buf: Any, counts: list[int], out: Any) -> None:
        self._gather_padded(self._tensor(buf), counts, self._tensor(out))

    def bcast(self, buf: Any, root: int) -> None:
        if len(buf):
            self._wait(dist.broadcast(self._tensor(buf), self.world_ranks[root], group=self.group, async_op=True), root)

    def allgather_obj(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def bcast_obj(self, obj: Any, root: int) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=self.world_ranks[root], group=self.group)
        return box[0]

    def barrier(self) -> None:
        self._wait(dist.barrier(group=self.group, async_op=True))

    def host_color(self) -> int:
        """The lowest rank with this rank's host name (collective)."""
        return self.allgather_obj(socket.gethostname()).index(socket.gethostname())

    def split(self, color: int | None) -> DistTransport | None:
        """A transport over the ranks of this color (collective over the whole job: every rank
        enters dist.new_group for every color)."""
        colors = self.allgather_obj(color)
        mine = None
        for c in sorted({c for c in colors if c is not None}):
            group = dist.new_group([self.world_ranks[q] for q, cq in enumerate(colors) if cq == c],
                                   backend=dist.get_backend(self.group))
            if c == color:
                mine = DistTransport(group)
        return mine

    def close(self) -> None:
        """Collective: destroy the groups of this transport's topology (and its own group, when
        it is not the default one)."""
        if self._topology is not None:
            self._topology.close()
            self._topology = None
        if self.group is not None and self.group != dist.GroupMember.WORLD:
            dist.barrier(group=self.group)  # gloo aborts a rank that destroys a group its peer still sends on
            dist.destroy_process_group(self.group)


def _implementations(mpi: MpiTransport, dist: DistTransport) -> tuple[EngineTransport, Transport]:
    """Never called: the type checker (mypy, in scripts/test.sh) holds each transport to its protocol here
    (the torch engine runs on MPI only; under torchrun the DDP hook uses a DistTransport)."""
    return mpi, dist

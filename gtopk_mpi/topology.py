"""Which ranks share a host: the layout the hierarchical collectives follow.

A host is the set of ranks that MPI places on one shared-memory node
(``MPI.COMM_TYPE_SHARED``; under torch.distributed: one host name), or, with
``GTOPK_RANKS_PER_HOST=L`` (emulating a cluster on one machine), the job's ranks ``h*L ..
h*L + L-1`` (also on a communicator split from the job's). Hosts are numbered by their
lowest rank; a host's lowest rank is its *leader*. Any layout works: uneven ranks per
host, ranks of one host not contiguous.

:func:`discover` builds, once per communicator and collectively, three transports:
``local`` (this rank's host), ``leaders`` (one rank per host; on leaders only) and
``cross`` (the ranks with this rank's local rank), and decides the communicator's
default schedule for gTop-k: hierarchical when GTOPK_HIERARCHICAL is 1, or "auto" and
the layout has several hosts of which one holds several ranks. Every rank must set
the same GTOPK_HIERARCHICAL and GTOPK_RANKS_PER_HOST (else ValueError on every rank).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import config

if TYPE_CHECKING:  # transport.py imports this module
    from .transport import Transport


@dataclass
class Topology:
    """The host layout of one communicator, seen from one rank."""

    host_of: list[int]          # host index of every rank (hosts numbered by their lowest rank)
    local: Transport            # over this rank's host, in rank order
    leaders: Transport | None   # over the hosts' lowest ranks (None on the other ranks)
    cross: Transport            # over the ranks with this rank's local rank, one per host
    hierarchical: bool          # the communicator's default gTop-k schedule
    closed: bool = False        # close() has released the transports

    @property
    def hosts(self) -> int:
        return max(self.host_of) + 1

    @property
    def ranks_per_host(self) -> list[int]:
        return [self.host_of.count(h) for h in range(self.hosts)]

    def describe(self) -> str:
        """"2 hosts x 2 ranks" (or "3 hosts of 2, 2, 1 ranks") and the default schedule."""
        sizes = self.ranks_per_host
        shape = (f"{len(sizes)} host{'s' * (len(sizes) > 1)} x {sizes[0]} rank{'s' * (sizes[0] > 1)}"
                 if len(set(sizes)) == 1 else f"{len(sizes)} hosts of {', '.join(map(str, sizes))} ranks")
        return f"{shape}, {'hierarchical' if self.hierarchical else 'flat'} gTop-k"

    def tree(self) -> HostTree:
        """An allreduce through the hosts (see HostTree)."""
        return HostTree(self)

    def close(self) -> None:
        """Collective: release the transports made for this layout."""
        if self.closed:
            return
        for link in (self.local, self.leaders, self.cross):
            if link is not None:
                link.close()
        self.closed = True


class HostTree:
    """Collectives through the host layout: inside each host, across the leaders, then the
    leader's result down its host. Each host's port carries one copy (the flat forms: up to
    one per rank), and every rank ends with the leader's bits."""

    def __init__(self, layout: Topology):
        self.layout = layout
        self.size = len(layout.host_of)

    def allreduce(self, buf: Any, op: str = "sum") -> None:
        self.layout.local.allreduce(buf, op)
        if self.layout.leaders is not None:
            self.layout.leaders.allreduce(buf, op)
        self.layout.local.bcast(buf, 0)

    def allgather(self, buf: Any, alloc: Any) -> tuple[Any, list[int]]:
        """Every rank's byte buffer, concatenated in rank order, and their sizes (as
        Transport.allgather)."""
        lay = self.layout
        host_buf, local_sizes = lay.local.allgather(buf, alloc)
        everything, sizes_by_host = None, None
        if lay.leaders is not None:
            everything, _ = lay.leaders.allgather(host_buf, alloc)
            sizes_by_host = lay.leaders.allgather_obj(local_sizes)
        sizes_by_host = lay.local.bcast_obj(sizes_by_host, 0)
        total = sum(map(sum, sizes_by_host))
        if everything is None:
            everything = alloc(total)
        lay.local.bcast(everything, 0)
        members = [[q for q, h in enumerate(lay.host_of) if h == host] for host in range(lay.hosts)]
        ranks = [q for host in members for q in host]  # the order the leaders gathered in
        sizes = [0] * self.size
        for q, n in zip(ranks, (n for host in sizes_by_host for n in host)):
            sizes[q] = n
        if ranks == sorted(ranks):
            return everything, sizes
        starts, at = {}, 0
        for q in ranks:
            starts[q], at = at, at + sizes[q]
        out, at = alloc(total), 0
        for q in range(self.size):
            out[at : at + sizes[q]] = everything[starts[q] : starts[q] + sizes[q]]
            at += sizes[q]
        return out, sizes


def wants_hierarchy(setting: str, host_of: list[int]) -> bool:
    """Whether GTOPK_HIERARCHICAL's value ``setting`` (auto, 1, 0) picks the hierarchical schedule
    on this layout."""
    hosts = max(host_of) + 1
    return setting == "1" or (setting == "auto" and 1 < hosts < len(host_of))


def discover(link: Transport) -> Topology:
    """The topology of ``link`` (collective over its ranks), which must offer
    ``host_color()`` (equal on ranks that share a host; collective) and ``split(color)``
    (a transport over the ranks of this rank's color, None for color None; collective)."""
    setting, per_host = config.HIERARCHICAL.get(), config.RANKS_PER_HOST.get()
    seen = link.allgather_obj((setting, per_host))
    if len(set(seen)) > 1:
        shown = " vs ".join(sorted({f"GTOPK_HIERARCHICAL={s} GTOPK_RANKS_PER_HOST={n}" for s, n in seen}))
        raise ValueError(f"gtopk_mpi: ranks disagree on the host layout settings: {shown}")
    if per_host < 0:
        raise ValueError(f"GTOPK_RANKS_PER_HOST={per_host}: expected 0 (ask the launcher) or a positive number "
                         "of ranks")
    colors = link.allgather_obj(link.world_ranks[link.rank] // per_host if per_host else link.host_color())
    lowest = {c: colors.index(c) for c in colors}  # hosts numbered by their lowest rank
    number = {low: h for h, low in enumerate(sorted(lowest.values()))}
    host_of = [number[lowest[c]] for c in colors]
    local = link.split(host_of[link.rank])
    assert local is not None  # every rank passed a color
    leaders = link.split(0 if local.rank == 0 else None)
    cross = link.split(local.rank)
    assert cross is not None
    return Topology(host_of, local, leaders, cross, wants_hierarchy(setting, host_of))

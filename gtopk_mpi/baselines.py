"""The baselines gTop-k is measured against (Shi et al., ICDCS-W 2019, Table 1).

* :func:`dense_allreduce` - the paper's DenseAllReduce: MPI_Allreduce of the whole vector,
  about 2m values through each rank's port.
* :func:`topk_allreduce` - the paper's TopKAllReduce: every rank's local top-k
  (index, value) pairs allgathered and summed: (P - 1) k entries received per rank.
* :func:`gtopk_tree_allreduce` - gTopKAllReduce as the paper draws it: a binary reduction
  tree to rank 0 with the butterfly's merge, then a broadcast of the final k-set; half the
  ranks idle each round and the broadcast doubles the rounds. No residual tracking: a
  reference point for benchmarks only.

Each body runs on any memory space (spaces.py) and raises the same error on every rank
for bad or disagreeing arguments (agreement.py).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from mpi4py import MPI

from . import arguments, runtime, spaces
from . import wire as wire_format
from .agreement import Error, local_error
from .butterfly import agree, begin, start
from .results import CommStats, SparseResult
from .spaces import Space
from .transport import Transport


def dense_allreduce(x: Any, average: bool = False, comm: MPI.Comm | Transport | None = None) -> Any:
    """The sum over all ranks of a 1-D array, on every rank (a new array, in x's memory).

    x: contiguous 1-D float16/32/64 or int32/64 (NumPy, or a torch CUDA tensor / CuPy
    array), the same length and dtype on every rank; float16 is summed in float32 and
    rounded once. ``average`` divides by the number of ranks (integers: floor division).
    ``comm``: an mpi4py communicator or a Transport (default: init()'s).
    """
    link, space = runtime.transport(comm), spaces.space_for(x)
    with space.activate():

        def check():
            xs = space.adopt(x)
            return xs, space.check(xs, "x", arguments.DENSE_DTYPES)

        seq = begin(link, "dense_allreduce")
        err, checked = local_error(link, check)
        xs, dtype = checked if err is None else (None, None)
        agree(link, wire_format.make_header(op="dense_allreduce", seq=seq, m=len(xs) if xs is not None else -1, k=0,
                                            count=0,
                                     rank=link.rank, dtype=dtype, average=average, values="merged"), err)
        out = reduce_agreed(link, space, xs)
        return space.wrap(space.scale_average(out, link.size) if average else out)


def reduce_agreed(link: Transport, space: Space, xs: Any, op: str = "sum") -> Any:
    """``op`` over all ranks of xs, an array of ``space`` whose length and dtype the ranks
    have agreed on, as a new array of ``space``. Device data goes through the message
    space: staged through host memory, or handed to a CUDA-aware MPI."""
    sets = spaces.message_space(space)
    return spaces.move(sets.allreduce(link, spaces.move(xs, space, sets), op), sets, space)


def topk_allreduce(x: Any, k: int | None = None, density: float | None = None, average: bool = False,
                   residual: Any = None, comm: MPI.Comm | Transport | None = None, align: bool = False,
                   wire: str = "fp32") -> SparseResult:
    """Local top-k, then an allgather of every rank's (index, value) pairs, summed.

    Arguments as gtopk_allreduce's. Returns the union of all ranks' k-sets (up to P*k
    entries) with values summed in a fixed pairwise order (identical on every rank). On a
    communicator whose default schedule is hierarchical (topology.py) the allgather goes
    through the hosts: inside each, across the leaders, back down.
    With ``residual`` the selection runs on residual + x and every selected entry is sent,
    so the residual becomes zero there (with a 16-bit ``wire``: the rounding error).
    """
    t0 = time.perf_counter()
    link, space, stats = runtime.transport(comm), spaces.space_for(x), CommStats()
    with space.activate():
        side, xs, rs = start("topk_allreduce", link, space, x, k, density, residual, "merged", average, align, stats,
                             wire)
        with stats.phase("comm"):
            if not align:  # (with align, start() ran the agreement pass)
                side.agree()
            if side.err is not None:
                side.err.raise_()
        sets, p = side.space, link.size
        with stats.phase("merge"):  # the whole k-set as one message, values rounded as the others decode them
            msg, _, errors = wire_format.encode(sets, side.header, side.idx, side.val, side.code,
                                                rounded=side.code != wire_format.RAW_VALUES, packing=side.pack)
        with stats.phase("comm"):  # ranks sharing hosts: through the hosts (one copy per port)
            gathered, sizes = (side.layout.tree() if side.layout.hierarchical else link).allgather(msg, sets.empty)
        stats.bytes_sent, stats.bytes_received = (p - 1) * len(msg), sum(sizes) - len(msg)
        stats.messages_sent, stats.entries_sent = p - 1, (p - 1) * len(side.idx)
        with stats.phase("merge"):
            parts, off = [], 0
            for size in sizes:
                buf = gathered[off : off + size]
                parts.append(wire_format.decode(sets, buf, wire_format.header_of(sets, buf), *side.types)[:2])
                off += size
            while len(parts) > 1:  # a fixed pairwise tree of exact unions: identical on every rank
                nxt = [sets.merge(*parts[i], *parts[i + 1], max(1, p * len(side.idx)))
                       for i in range(0, len(parts) - 1, 2)]
                parts = nxt + parts[len(nxt) * 2 :]
            g_idx, g_val = parts[0]
            if average:
                g_val = sets.scale_average(g_val, p)
            carried = spaces.move(side.own_idx, sets, space)
            if rs is not None:
                space.zero_at(rs, carried)
                if errors is not None:  # every entry was sent, rounded: the rounding error stays
                    space.add_at(rs, carried, spaces.move(errors, sets, space))
        g_idx, g_val = (spaces.move(a, sets, space) for a in (g_idx, g_val))
    stats.total_s = time.perf_counter() - t0
    return SparseResult(space.wrap(g_idx), space.wrap(g_val), int(side.header["m"][0]), stats,
                        carried=space.wrap(carried), space=space)


def gtopk_tree_allreduce(x: Any, k: int | None = None, density: float | None = None, average: bool = False,
                         comm: MPI.Comm | Transport | None = None, align: bool = False) -> SparseResult:
    """gTopKAllReduce as drawn in the paper (see the module docstring). For comparison only."""
    t0 = time.perf_counter()
    link, space, stats = runtime.transport(comm), spaces.space_for(x), CommStats()
    me, p = link.rank, link.size
    with space.activate():
        side, _, _ = start("gtopk_tree_allreduce", link, space, x, k, density, None, "merged", average, align, stats)
        if not align:
            with stats.phase("comm"):
                side.agree()
        if side.err is not None:
            side.err.raise_()
        step = 1
        while step < p:
            if me % (2 * step) == step:
                side.send(me - step, side.message())
                break
            if me + step < p:
                side.absorb(side.recv(me + step))
            step <<= 1
        # broadcast: the root's header first (its count or error sizes the payload), then the payload
        sets, hb = side.space, wire_format.HEADER.itemsize
        msg: Any = side.message() if me == 0 else None
        head = sets.to_host(msg[:hb]).copy() if me == 0 else np.zeros(hb, np.uint8)
        with stats.phase("comm"):
            link.bcast(head, 0)
            h = head.view(wire_format.HEADER)[0]
            value_bytes = int(h["count"]) * np.dtype(side.types[1]).itemsize  # the tree sends raw values
            nbytes = int(h["count"]) if h["error"] else int(h["index_bytes"]) + value_bytes
            body = msg[hb:] if me == 0 else sets.empty(nbytes)
            link.bcast(sets.ready(body), 0)
        if me == 0:  # binomial tree: ceil(log2 P) copies (message() counted its entries once)
            stats.bytes_sent += (hb + nbytes) * (p - 1).bit_length()
            stats.entries_sent += 0 if h["error"] else int(h["count"]) * ((p - 1).bit_length() - 1)
        else:
            stats.bytes_received += hb + nbytes
        if h["error"]:
            Error(int(h["error"]), bytes(sets.to_host(body)).decode("utf-8", errors="replace")).raise_()
        g_idx, g_val, _ = wire_format.decode(sets, sets.concat([sets.from_host(head), body]), h, *side.types)
        if average:
            g_val = sets.scale_average(g_val, p)
        g_idx, g_val = (spaces.move(a, sets, space) for a in (g_idx, g_val))
    stats.total_s = time.perf_counter() - t0
    return SparseResult(space.wrap(g_idx), space.wrap(g_val), int(h["m"]), stats, space=space)

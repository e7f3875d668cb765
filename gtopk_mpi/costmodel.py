"""The alpha-beta cost model of the paper's Table 1, and its fit on a real network.

Time of one message of n bytes: alpha + n * beta. For m gradient elements of v
bytes, k = rho * m selected entries (an entry is an index and a value: 4 + v bytes raw,
or the bytes per entry a run measured with the compact wire format, e), plus a header h
per message, P ranks and L = ceil(log2 P):

  dense (ring allreduce)     2 (P-1) alpha + 2 (P-1)/P * m v beta
  topk (allgather)           L alpha + (P-1) k (4+v) beta
  gtopk-tree (tree + bcast)  2 L alpha + 2 L (k (4+v) + h) beta
  gtopk (butterfly)          L alpha + L (k (4+v) + h) beta
  gtopk-exact                gtopk + one allreduce of k values (recursive doubling: L alpha + L k v beta)

Sparse algorithms add the local selection time and L merges (both measured).

Hosts (:func:`layout_comm_time`): H hosts of G ranks each (ranks placed host by host),
one port per host (alpha, beta) and shared memory inside a host (alpha_i, beta_i, by
ping-pong between two ranks of one host); s = k e + h, a k-set on the wire, r = k (4+v) + h
the raw pairs a host passes inside:

  gtopk, flat                log2 G (alpha_i + s beta_i) + log2 H (alpha + G s beta)
                             (every cross-host round, all G ranks of a host send through its port)
  gtopk, hierarchical        log2 G (alpha_i + r beta_i) + log2 H (alpha + s beta)
                             + log2 G (alpha_i + (r + k) beta_i)   (the result down the host, flags)
  dense                      2 (H-1) alpha + 2 (H-1)/H m v beta + 2 log2 G alpha_i + 2 m v beta_i
                             (reduce inside, ring across, broadcast inside: what MPICH sends through
                             the port, measured, about m v per host at H = 2)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from .wire import HEADER


@dataclass(frozen=True)
class Network:
    alpha: float  # s per message
    beta: float   # s per byte


def log2p(p: int) -> int:
    return math.ceil(math.log2(p)) if p > 1 else 0


def comm_time(algorithm: str, net: Network, p: int, m: int, k: int, value_bytes: int = 4,
              entry_bytes: float | None = None) -> float:
    """Predicted communication time (s) of one call. ``entry_bytes``: measured bytes per
    sparse entry, headers included (default: raw int32 index + value, plus headers)."""
    if p <= 1:
        return 0.0
    lg = log2p(p)
    entry, h = (4 + value_bytes, HEADER.itemsize) if entry_bytes is None else (entry_bytes, 0)
    if algorithm == "dense":
        return 2 * (p - 1) * net.alpha + 2 * (p - 1) / p * m * value_bytes * net.beta
    if algorithm == "topk":
        return lg * net.alpha + (p - 1) * k * entry * net.beta
    if algorithm == "gtopk-tree":
        return 2 * lg * net.alpha + 2 * lg * (k * entry + h) * net.beta
    if algorithm in ("gtopk", "gtopk-exact"):
        t = lg * net.alpha + lg * (k * entry + h) * net.beta
        if algorithm == "gtopk-exact":
            t += lg * net.alpha + lg * k * value_bytes * net.beta
        return t
    raise ValueError(f"unknown algorithm {algorithm!r}")


def total_time(algorithm: str, net: Network, p: int, m: int, k: int, select_s: float, merge_s: float,
               value_bytes: int = 4, entry_bytes: float | None = None) -> float:
    """Communication plus, for sparse algorithms, selection and log2(P) merges (s)."""
    t = comm_time(algorithm, net, p, m, k, value_bytes, entry_bytes)
    if algorithm != "dense":
        t += select_s + log2p(p) * merge_s
    return t


def ping_pong(comm: MPI.Comm, sizes: list[int] | None = None, repeats: int = 10, peer: int = 1
              ) -> list[tuple[int, float]]:
    """One-way time (s) per message size (bytes) between ranks 0 and ``peer``; others wait.

    Returns [(size, seconds)] on every rank (median of ``repeats`` round trips / 2).
    """
    sizes = sizes or [8, 1 << 10, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24]
    me = comm.Get_rank()
    if peer != 1:  # the same exchange, with ``peer`` in rank 1's role
        me = 1 if me == peer else (2 if me == 1 else me)
    out = []
    for n in sizes:
        buf = np.zeros(n, np.uint8)
        times = []
        comm.Barrier()
        for _ in range(repeats + 1):
            if me == 0:
                t0 = time.perf_counter()
                comm.Send(buf, peer, tag=7)
                comm.Recv(buf, peer, tag=7)
                times.append((time.perf_counter() - t0) / 2)
            elif me == 1:
                comm.Recv(buf, 0, tag=7)
                comm.Send(buf, 0, tag=7)
        median = float(np.median(times[1:])) if me == 0 else 0.0
        out.append((n, comm.bcast(median, root=0)))
    return out


def fit(samples: list[tuple[int, float]]) -> Network:
    """alpha, beta from ping-pong (bytes, seconds) samples.

    beta: least-squares slope over the messages of at least 1 MiB (the bandwidth
    regime; smaller ones ride on token-bucket bursts and socket buffers); alpha: the
    smallest message's time less its bytes at that rate.
    """
    big = [(n, t) for n, t in samples if n >= 1 << 20] or sorted(samples)[-2:]
    n = np.array([s for s, _ in big], float)
    t = np.array([x for _, x in big], float)
    beta = float(np.polyfit(n, t, 1)[0]) if len(big) > 1 else float(t[0] / n[0])
    n0, t0 = min(samples)
    return Network(max(t0 - n0 * beta, 0.0), max(beta, 0.0))


def layout_comm_time(algorithm: str, net: Network, intra: Network, hosts: int, per_host: int, m: int, k: int,
                     value_bytes: int = 4, entry_bytes: float | None = None) -> float:
    """Predicted communication time (s) of one call on ``hosts`` hosts of ``per_host`` ranks
    (see the module docstring): algorithm "dense", "gtopk" (flat) or "gtopk-hier"."""
    lg_g, lg_h = log2p(per_host), log2p(hosts)
    h = HEADER.itemsize
    s = k * (4 + value_bytes) + h if entry_bytes is None else k * entry_bytes
    raw = k * (4 + value_bytes) + h
    if algorithm == "dense":
        return (2 * (hosts - 1) * net.alpha + 2 * (hosts - 1) / hosts * m * value_bytes * net.beta
                + 2 * lg_g * intra.alpha + (2 * m * value_bytes * intra.beta if per_host > 1 else 0.0))
    if algorithm == "gtopk":
        return lg_g * (intra.alpha + s * intra.beta) + lg_h * (net.alpha + per_host * s * net.beta)
    if algorithm == "gtopk-hier":
        return (lg_g * (intra.alpha + raw * intra.beta) + lg_h * (net.alpha + s * net.beta)
                + lg_g * (intra.alpha + (raw + k) * intra.beta))
    raise ValueError(f"unknown algorithm {algorithm!r}")

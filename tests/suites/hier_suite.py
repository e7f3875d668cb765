"""Multi-rank checks of the hierarchical gTop-k, on hosts emulated with GTOPK_RANKS_PER_HOST=L:
``GTOPK_RANKS_PER_HOST=L mpiexec -n P python tests/suites/hier_suite.py`` (ranks h*L .. h*L+L-1 form
host h; the last host may hold fewer). Every rank regenerates every rank's input and
compares with the NumPy model of the hierarchical algorithm in reference.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))  # reference, mpi_harness
from mpi_suite import COMM, assert_result, expect_error, inputs  # noqa: E402  (mpi_suite initializes gtopk_mpi)

import gtopk_mpi as g  # noqa: E402
from gtopk_mpi import wire  # noqa: E402
from gtopk_mpi.topology import Topology  # noqa: E402
from gtopk_mpi.transport import MpiTransport  # noqa: E402

import reference as ref  # noqa: E402
from mpi_harness import Suite  # noqa: E402

RANK, P = g.rank(), g.size()
L = int(os.environ["GTOPK_RANKS_PER_HOST"])
HOSTS = [list(range(h, min(h + L, P))) for h in range(0, P, L)]
SUITE = Suite(COMM)
check = SUITE.check


def power_of_two(n: int) -> bool:
    return n & (n - 1) == 0


@check
def layout_follows_the_override():
    layout = g.runtime.layout()
    assert layout.host_of == [q // L for q in range(P)], layout.host_of
    assert g.local_size() == len(HOSTS[RANK // L]) and g.local_rank() == RANK % L
    assert g.runtime.cross_rank() == RANK // L
    assert layout.hierarchical == (len(HOSTS) > 1 and L > 1), layout.describe()
    assert (layout.leaders is not None) == (RANK % L == 0)


@check
def hierarchical_matches_the_model():
    """Result bit-identical on every rank and equal to the model's, in every dtype, wire and
    values mode; each rank's residual equal to the model's (what its entries did not carry,
    plus the rounding errors it owns as a leader)."""
    for dtype, wires in ((np.float32, ("fp32", "bf16", "fp16", "raw")), (np.float16, ("fp32",)),
                         (np.float64, ("fp32",))):
        for wire_name in wires:
            for values in ("merged", "exact"):
                scale = 20 if dtype == np.float16 else 300  # integers, summed exactly in any order ("exact")
                xs = [np.round(x * scale).astype(dtype) for x in inputs(40, 1500)]
                r = [np.round(x * 7).astype(dtype) for x in inputs(41, 1500)]
                mine = r[RANK].copy()
                res = g.gtopk_allreduce(xs[RANK], k=37, residual=mine, values=values, wire=wire_name,
                                        hierarchical=True)
                w_idx, w_val, after = ref.gtopk(xs, 37, residuals=r, values=values, wire=wire_name, hosts=HOSTS)
                assert_result(res, w_idx, w_val)
                assert ref.same_bits(mine, after[RANK]), f"{dtype.__name__} {wire_name} {values}: residual differs"


@check
def conservation_over_steps():
    """sum over ranks of residual + result == sum of (residual before + x), exactly (integer
    data), over steps of the bf16 wire, with average and density."""
    m = 2000
    residuals = [np.zeros(m, np.float32) for _ in range(P)]
    for step in range(8):
        xs = [np.round(x * 500) for x in inputs(50 + step, m)]
        before = np.sum([r.astype(np.float64) + x for r, x in zip(residuals, xs)], axis=0)
        mine = residuals[RANK].copy()
        res = g.gtopk_allreduce(xs[RANK], density=0.02, residual=mine, wire="bf16")
        w_idx, w_val, after = ref.gtopk(xs, 40, residuals=residuals, wire="bf16", hosts=HOSTS)
        assert_result(res, w_idx, w_val)
        assert ref.same_bits(mine, after[RANK]), f"step {step}: residual differs"
        residuals = after
        total = np.sum([r.astype(np.float64) for r in residuals], axis=0) + res.to_dense()
        assert np.array_equal(total, before), f"step {step}: mass not conserved"
    res = g.gtopk_allreduce(inputs(59, m)[RANK], k=40, average=True)
    w_idx, w_val, _ = ref.gtopk(inputs(59, m), 40, average=True, hosts=HOSTS)
    assert_result(res, w_idx, w_val)


@check
def same_result_as_flat_on_power_of_two_layouts():
    """Hosts of 2^a ranks, 2^b hosts, lossless wire: the flat butterfly's first a rounds stay
    inside a host and its lowest rank of every later group is a leader, so both schedules
    compute the same sums in the same order."""
    if not (power_of_two(L) and power_of_two(len(HOSTS)) and P % L == 0):
        return
    xs = inputs(60, 4000)
    flat = g.gtopk_allreduce(xs[RANK], k=50, hierarchical=False)
    hier = g.gtopk_allreduce(xs[RANK], k=50, hierarchical=True)
    assert np.array_equal(flat.indices, hier.indices) and ref.same_bits(flat.values, hier.values)


@check
def messages_and_port_bytes():
    """Every message's size is the model's (intra-host messages raw, across hosts in the wire
    format); only leaders send through the port, one k-set per cross round, which is what
    the one-rank-per-host butterfly over the leaders sends."""
    m, k = 20_000, 200
    xs = inputs(61, m)
    for wire_name in ("fp32", "bf16"):
        res = g.gtopk_allreduce(xs[RANK], k=k, wire=wire_name, hierarchical=True)
        trace = {}
        ref.gtopk(xs, k, wire=wire_name, trace=trace, hosts=HOSTS)
        sizes = [ref.message_bytes(*msg, np.float32, wire_name, wire.HEADER.itemsize) for msg in trace[RANK]]
        assert res.stats.bytes_sent == sum(sizes), (wire_name, res.stats.bytes_sent, sum(sizes))
        assert res.stats.messages_sent == len(sizes)
        remote = sum(size for msg, size in zip(trace[RANK], sizes) if msg[0] != "raw")
        assert res.stats.port_bytes == remote, (res.stats.port_bytes, remote)
        assert (res.stats.port_bytes > 0) == (RANK % L == 0 and len(HOSTS) > 1)
        flat = g.gtopk_allreduce(xs[RANK], k=k, wire=wire_name, hierarchical=False)
        host = COMM.allgather((RANK // L, res.stats.port_bytes, flat.stats.port_bytes))
        mine = [(h, f) for q, h, f in host if q == RANK // L]
        hier_port, flat_port = sum(h for h, _ in mine), sum(f for _, f in mine)
        if len(HOSTS) > 1 and len(mine) == L and P % L == 0 and power_of_two(L) and power_of_two(len(HOSTS)):
            # the flat schedule sends L copies of the same set through the port each cross round
            # (sizes differ only where the packing of the leaders' and others' sets differs)
            assert hier_port * L <= flat_port * 1.05, (hier_port, flat_port)


@check
def schedules_must_agree():
    """A rank asking for the other schedule, or an invalid one: the same error on every rank,
    then the next call works."""
    x = inputs(62, 1000)[RANK]
    if P > 1:
        expect_error(g.MismatchError, "ranks disagree on the schedule: flat vs hierarchical",
                     lambda: g.gtopk_allreduce(x, k=5, hierarchical=False if RANK == P - 1 else None))
        expect_error(g.MismatchError, "ranks disagree on the schedule",
                     lambda: g.gtopk_allreduce(x, k=5, hierarchical=RANK == 0))
        expect_error(g.MismatchError, "ranks disagree on the collective",
                     lambda: g.dense_allreduce(x) if RANK == P - 1 else g.gtopk_allreduce(x, k=5))
    expect_error(ValueError, "hierarchical must be None, 'auto', True or False, got 'yes'",
                 lambda: g.gtopk_allreduce(x, k=5, hierarchical="yes" if RANK == P - 1 else True))
    bad = x.astype(np.float64) if RANK == P - 1 else x
    expect_error(ValueError, "x", lambda: g.gtopk_allreduce(bad, k=5, wire="bf16"))
    xs = inputs(63, 800)
    res = g.gtopk_allreduce(xs[RANK], k=9)
    assert_result(res, *ref.gtopk(xs, 9, hosts=HOSTS)[:2])


@check
def dense_and_topk_on_hosts():
    """dense: MPI's; Top-k: the allgather through the hosts, in rank order (equal to the model's
    rank-order tree of unions)."""
    xs = inputs(64, 3000, np.float32, integer=True)
    out = g.dense_allreduce(xs[RANK])
    assert np.array_equal(out, np.sum(xs, axis=0)), "dense sum"
    SUITE.identical_on_all_ranks(out.tobytes())
    for wire_name in ("fp32", "bf16"):
        xs = inputs(65, 2500)
        res = g.topk_allreduce(xs[RANK], k=30, wire=wire_name)
        w_idx, w_val, _ = ref.topk_allgather(xs, 30, wire=wire_name)
        assert_result(res, w_idx, w_val)


@check
def host_tree_on_interleaved_hosts():
    """Ranks of a host need not be contiguous: hosts {0, 2, ...} and {1, 3, ...} built by hand;
    the allgather through them still returns every rank's buffer in rank order (MPI)."""
    if not isinstance(COMM, MPI.Comm):
        return
    local = COMM.Split(RANK % 2, key=RANK)
    leaders = COMM.Split(0 if local.Get_rank() == 0 else MPI.UNDEFINED, key=RANK)
    layout = Topology([q % 2 for q in range(P)], MpiTransport(local),
                      None if leaders == MPI.COMM_NULL else MpiTransport(leaders), None, True)
    mine = np.full(RANK + 1, RANK, np.uint8)  # sizes differ per rank
    out, sizes = layout.tree().allgather(mine, lambda n: np.empty(n, np.uint8))
    assert sizes == [q + 1 for q in range(P)], sizes
    assert np.array_equal(out, np.concatenate([np.full(q + 1, q, np.uint8) for q in range(P)]))
    buf = np.arange(5, dtype=np.float64) * (RANK + 1)
    layout.tree().allreduce(buf)
    assert np.array_equal(buf, np.arange(5) * sum(range(1, P + 1)))
    layout.close()


def main() -> int:
    status = SUITE.run()
    g.shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())

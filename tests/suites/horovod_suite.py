"""The rest of horovod.torch's API in gtopk_mpi.torch, run as ``mpiexec -n P python tests/suites/horovod_suite.py``.

Process sets (static from init, dynamic add/remove), join with stand-ins, alltoall,
reducescatter and the grouped ops, sparse allreduce and sparse gradients in the
optimizer, the autograd of every collective, broadcast_optimizer_state on a fresh
optimizer, the capability queries. Every rank builds every rank's input from fixed
seeds and compares with a local torch / NumPy reference (integer-valued data, so every
summation order is exact), and errors with the same text on every rank.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))  # reference, mpi_harness
import gtopk_mpi.torch as hvd  # noqa: E402
from gtopk_mpi.torch import mpi_ops  # noqa: E402

import reference as ref  # noqa: E402
from mpi_harness import Suite  # noqa: E402

os.environ["HOROVOD_DYNAMIC_PROCESS_SETS"] = "1"
EVEN = hvd.ProcessSet(range(0, MPI.COMM_WORLD.Get_size(), 2))
hvd.init(process_sets=[EVEN])  # a static set; the odd ranks' set is added dynamically
RANK, P = hvd.rank(), hvd.size()
SUITE = Suite()
check = SUITE.check
torch.set_num_threads(1)


def data(q: int, shape, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * seed + q)
    return torch.randint(-50, 50, shape, generator=g).to(dtype)


def expect_everywhere(exc_type, fragment: str, fn, ranks=None) -> None:
    """fn raises exc_type with ``fragment`` on this rank; the text is the same on every rank
    of ``ranks`` (default all; the others must call with the same ranks)."""
    text = ""
    try:
        fn()
    except exc_type as e:
        assert fragment in str(e), str(e)
        text = f"{type(e).__name__}: {e}"
    else:
        raise AssertionError(f"no {exc_type.__name__} ({fragment})")
    texts = SUITE.comm.allgather(text)
    group = [texts[q] for q in (ranks if ranks is not None else range(P))]
    assert len(set(group)) == 1, group


@check
def capability_queries():
    for fn in (hvd.mpi_built, hvd.mpi_enabled, hvd.gloo_built, hvd.gloo_enabled, hvd.ddl_built, hvd.ccl_built,
               hvd.cuda_built, hvd.rocm_built, hvd.mpi_threads_supported, hvd.is_homogeneous):
        assert isinstance(fn(), bool), fn.__name__
    assert hvd.mpi_built() and hvd.mpi_enabled() and not hvd.ccl_built() and not hvd.ddl_built()
    assert hvd.is_homogeneous()
    assert isinstance(hvd.nccl_built(), int)
    path = os.path.join(tempfile.gettempdir(), f"gtopk_timeline_{os.getpid()}.json")
    path = SUITE.comm.allgather(path)[0]
    hvd.start_timeline(path)
    hvd.allreduce(torch.ones(2), name="timeline.op")
    hvd.stop_timeline()
    if RANK == 0:
        text = Path(path).read_text()
        assert "timeline.op" in text and text.rstrip().endswith("]"), text[-200:]
        os.unlink(path)


@check
def alltoall_equal_and_given_splits():
    rows = 2 * P
    xs = [data(q, (rows, 3), torch.int64, 1) for q in range(P)]
    out = hvd.alltoall(xs[RANK])
    assert torch.equal(out, torch.cat([x[2 * RANK : 2 * RANK + 2] for x in xs]))
    # rank q sends (q + j) % 3 rows to rank j
    splits = [[(q + j) % 3 for j in range(P)] for q in range(P)]
    xs = [data(q, (sum(splits[q]), 2), torch.float32, 2) for q in range(P)]

    def piece(q: int, j: int) -> torch.Tensor:
        start = sum(splits[q][:j])
        return xs[q][start : start + splits[q][j]]

    out, received = hvd.alltoall(xs[RANK], splits=torch.tensor(splits[RANK], dtype=torch.int32))
    assert torch.equal(out, torch.cat([piece(q, RANK) for q in range(P)]))
    assert received.dtype == torch.int32 and received.tolist() == [splits[q][RANK] for q in range(P)]
    out, received = hvd.synchronize(hvd.alltoall_async(xs[RANK], splits=splits[RANK], name="a2a.async"))
    assert torch.equal(out, torch.cat([piece(q, RANK) for q in range(P)]))
    # autograd against the same exchange in plain torch
    x = xs[RANK].clone().requires_grad_(True)
    out, _ = hvd.alltoall(x, splits=splits[RANK])
    w = [data(j, (sum(splits[q][j] for q in range(P)), 2), torch.float32, 3) for j in range(P)]
    (out * w[RANK]).sum().backward()
    xr = [t.clone().requires_grad_(True) for t in xs]
    outs = [torch.cat([xr[q][sum(splits[q][:j]) : sum(splits[q][: j + 1])] for q in range(P)]) for j in range(P)]
    sum((o * wj).sum() for o, wj in zip(outs, w)).backward()
    assert torch.equal(x.grad, xr[RANK].grad)
    expect_everywhere(ValueError, "splits", lambda: hvd.alltoall(torch.ones(P, 2), splits=[P + 1] + [0] * (P - 1),
                                                                 name="a2a.bad"))


@check
def reducescatter_ops_scales_uneven_rows_and_grad():
    rows = 2 * P + 1  # uneven: the first rank(s) get one row more
    parts = mpi_ops.scatter_rows(rows, P)
    start = sum(parts[: RANK])
    for dtype in (torch.int32, torch.int64, torch.float16, torch.float32, torch.float64):
        xs = [data(q, (rows, 2), dtype, 4) for q in range(P)]
        total = sum(x.double() for x in xs)
        got = hvd.reducescatter(xs[RANK], op=hvd.Sum)
        assert got.dtype == dtype and torch.equal(got.double(), total[start : start + parts[RANK]]), dtype
        avg = hvd.reducescatter(xs[RANK])  # Horovod's default op: Average
        want = total / P if dtype.is_floating_point else (total * (1.0 / P)).trunc()  # Horovod: toward 0
        assert torch.allclose(avg.double(), want[start : start + parts[RANK]], rtol=1e-3), dtype
    xs = [data(q, (rows, 2), torch.float64, 5) for q in range(P)]
    got = hvd.reducescatter(xs[RANK], op=hvd.Sum, prescale_factor=2.0, postscale_factor=0.5)
    assert torch.equal(got, sum(xs)[start : start + parts[RANK]])
    outs = hvd.grouped_reducescatter([xs[RANK], 2 * xs[RANK]], op=hvd.Sum)
    assert torch.equal(outs[0], sum(xs)[start : start + parts[RANK]])
    assert torch.equal(outs[1], 2 * sum(xs)[start : start + parts[RANK]])
    # gradient: Horovod's (Sum scales by the size) then allgather
    for op, factor in ((hvd.Sum, P), (hvd.Average, 1)):
        x = xs[RANK].clone().requires_grad_(True)
        y = hvd.reducescatter(x, op=op)
        w = data(RANK, tuple(y.shape), torch.float64, 6)
        (y * w).sum().backward()
        ws = [data(q, (parts[q], 2), torch.float64, 6) for q in range(P)]
        assert torch.equal(x.grad, torch.cat(ws) * factor), op
        x.grad = None
        ys = hvd.grouped_reducescatter([x, x * 1], op=op)
        assert all(t.grad_fn is not None for t in ys)
        sum((t * w).sum() for t in ys).backward()
        assert torch.equal(x.grad, 2 * torch.cat(ws) * factor), op
    expect_everywhere(ValueError, "Reducescatter currently only supports AVERAGE and SUM.",
                      lambda: hvd.reducescatter(torch.ones(P, 2), op=hvd.Max, name="rs.max"))
    expect_everywhere(hvd.TensorMismatchError, "rank-zero tensor",
                      lambda: hvd.reducescatter(torch.tensor(1.0), name="rs.scalar"))


@check
def grouped_allgather_and_allgather_grad_average():
    xs = [[data(q, (q + 1, 2), torch.float32, 7), data(q, (2, q + 2), torch.float32, 8).T.contiguous()]
          for q in range(P)]
    outs = hvd.grouped_allgather(xs[RANK])
    assert torch.equal(outs[0], torch.cat([x[0] for x in xs]))
    assert torch.equal(outs[1], torch.cat([x[1] for x in xs]))
    # Horovod: the incoming gradient averaged over the ranks, then this rank's rows
    x = xs[RANK][0].clone().requires_grad_(True)
    g = hvd.allgather(x)
    ws = [data(q, tuple(g.shape), torch.float32, 9) for q in range(P)]  # each rank's own upstream gradient
    (g * ws[RANK]).sum().backward()
    start = sum(q + 1 for q in range(RANK))
    assert torch.equal(x.grad, (sum(ws) / P)[start : start + RANK + 1])
    a, b = (t.clone().requires_grad_(True) for t in xs[RANK])
    ga, gb = hvd.grouped_allgather([a, b])
    assert ga.grad_fn is not None and gb.grad_fn is not None
    (ga * ws[RANK][: ga.shape[0]]).sum().backward()
    assert torch.equal(a.grad, (sum(ws) / P)[start : start + RANK + 1])


@check
def grouped_allreduce_is_differentiable():
    a = torch.full((3,), float(RANK + 1), requires_grad=True)
    b = torch.full((2, 2), float(RANK), requires_grad=True)
    ya, yb = hvd.grouped_allreduce([a, b], op=hvd.Sum)
    assert ya.grad_fn is not None and yb.grad_fn is not None
    assert torch.equal(ya.detach(), torch.full((3,), float(P * (P + 1) // 2)))
    (ya.sum() * (RANK + 1) + yb.sum()).backward()
    assert torch.equal(a.grad, torch.full((3,), float(P * (P + 1) // 2)))
    assert torch.equal(b.grad, torch.full((2, 2), float(P)))


@check
def sparse_allreduce_and_sparse_gradients_in_the_optimizer():
    def sparse(q: int) -> torch.Tensor:
        idx = torch.tensor([[q % 5, (q * 3 + 1) % 5, 4]])
        return torch.sparse_coo_tensor(idx, data(q, (3, 2), torch.float32, 10), (5, 2), check_invariants=True)

    for op in (hvd.Sum, hvd.Average):
        got = hvd.sparse_allreduce_async(sparse(RANK), name=f"sparse.{op}", op=op)()
        assert got.is_sparse
        want = sum(sparse(q).to_dense() for q in range(P))
        if op == hvd.Sum:
            assert torch.equal(got.coalesce().to_dense(), want)
        else:  # values divided before the duplicates are summed, as in Horovod
            torch.testing.assert_close(got.coalesce().to_dense(), want / P, rtol=1e-6, atol=1e-6)
    # nn.Embedding(sparse=True) + SparseAdam, against the same averaged sparse gradient applied locally
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 3, sparse=True)
    twin = torch.nn.Embedding(10, 3, sparse=True)
    twin.load_state_dict(emb.state_dict())
    opt = hvd.DistributedOptimizer(torch.optim.SparseAdam(emb.parameters(), lr=0.1),
                                   named_parameters=emb.named_parameters())
    ref_opt = torch.optim.SparseAdam(twin.parameters(), lr=0.1)
    for step in range(2):
        batch = [torch.tensor([(q + step) % 10, (2 * q + 3) % 10]) for q in range(P)]
        opt.zero_grad()
        emb(batch[RANK]).pow(2).sum().backward()
        opt.step()
        grads = []
        for q in range(P):
            twin.zero_grad()
            twin(batch[q]).pow(2).sum().backward()
            grads.append(twin.weight.grad.coalesce())
        idx = torch.cat([g.indices().T for g in grads]).T
        twin.weight.grad = torch.sparse_coo_tensor(idx, torch.cat([g.values() for g in grads]) / P, (10, 3),
                                                   check_invariants=True)
        ref_opt.step()
        assert torch.equal(emb.weight.detach(), twin.weight.detach()), step
    SUITE.identical_on_all_ranks(emb.weight.detach().numpy().tobytes())
    # sparse_as_dense: reduced densely, handed back sparse (SparseAdam takes only sparse gradients)
    torch.manual_seed(0)
    dense_emb = torch.nn.Embedding(10, 3, sparse=True)
    dense_opt = hvd.DistributedOptimizer(torch.optim.SparseAdam(dense_emb.parameters(), lr=0.1),
                                         named_parameters=dense_emb.named_parameters(), sparse_as_dense=True)
    sparse_emb = torch.nn.Embedding(10, 3, sparse=True)
    sparse_emb.load_state_dict(dense_emb.state_dict())
    renamed = [("sparse." + n, p) for n, p in sparse_emb.named_parameters()]
    sparse_opt = hvd.DistributedOptimizer(torch.optim.SparseAdam(sparse_emb.parameters(), lr=0.1),
                                          named_parameters=renamed)
    batch = torch.tensor([RANK % 10, 7])
    for e, o in ((dense_emb, dense_opt), (sparse_emb, sparse_opt)):
        o.zero_grad()
        e(batch).pow(2).sum().backward()
        o.step()
    torch.testing.assert_close(dense_emb.weight, sparse_emb.weight, rtol=1e-6, atol=1e-7)


@check
def optimizer_without_named_parameters_and_fresh_state_broadcast():
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 2)
    twin = torch.nn.Linear(4, 2)
    twin.load_state_dict(model.state_dict())
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.5))
    xs = [data(q, (3, 4), torch.float32, 11) for q in range(P)]
    opt.zero_grad()
    model(xs[RANK]).sum().backward()
    opt.step()
    grads = []
    for q in range(P):
        twin.zero_grad()
        twin(xs[q]).sum().backward()
        grads.append([p.grad.clone() for p in twin.parameters()])
    with torch.no_grad():
        for i, p in enumerate(twin.parameters()):
            p -= 0.5 * (sum(g[i] for g in grads) / P)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    names = sorted(opt._parameter_names.values())  # Horovod's attribute, its names
    assert names == ["allreduce.noname.0.0", "allreduce.noname.0.1"], names
    assert SUITE.comm.allgather(names) == [names] * P
    # a freshly built optimizer: Horovod creates its state (one zero-gradient step), then broadcasts root's
    net = torch.nn.Linear(3, 3)
    fresh = torch.optim.Adam(net.parameters(), lr=0.01)
    for g in fresh.param_groups:
        g["lr"] = 0.01 * (RANK + 1)
    hvd.broadcast_optimizer_state(fresh, root_rank=P - 1)
    state = fresh.state_dict()
    assert len(state["state"]) == 2 and all("exp_avg" in s for s in state["state"].values())
    assert fresh.param_groups[0]["lr"] == 0.01 * P
    wrapped = hvd.DistributedOptimizer(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9))
    hvd.broadcast_optimizer_state(wrapped, root_rank=0)
    assert all("momentum_buffer" in s for s in wrapped.state_dict()["state"].values())


@check
def process_sets_static_and_dynamic():
    assert EVEN.process_set_id is not None and EVEN.size() == len(range(0, P, 2))
    assert EVEN.included() == (RANK % 2 == 0) and hvd.global_process_set.ranks == list(range(P))
    odd = hvd.add_process_set(hvd.ProcessSet(range(1, P, 2)))  # every rank, in the same order
    assert odd.process_set_id is not None and odd.ranks == list(range(1, P, 2))
    mine = EVEN if RANK % 2 == 0 else odd
    members = mine.ranks
    assert mine.rank() == members.index(RANK) and mine.size() == len(members)
    xs = [data(q, (4, 3), torch.float32, 12) for q in range(P)]
    # both sets at once, each on its own ranks
    got = hvd.allreduce(xs[RANK], op=hvd.Sum, process_set=mine, name="ps.sum")
    assert torch.equal(got, sum(xs[q] for q in members))
    got = hvd.allgather(xs[RANK], process_set=mine, name="ps.gather")
    assert torch.equal(got, torch.cat([xs[q] for q in members]))
    root = members[-1]
    assert torch.equal(hvd.broadcast(xs[RANK], root, process_set=mine, name="ps.bcast"), xs[root])
    assert hvd.broadcast_object(RANK, root, process_set=mine) == root
    assert hvd.allgather_object(RANK, process_set=mine) == list(members)
    hvd.barrier(process_set=mine)
    # gTop-k on the set's ranks (the butterfly on its communicator) against the reference
    m, k = 4000, 40
    ys = [data(q, (m,), torch.float32, 13) for q in range(P)]
    got = hvd.allreduce(ys[RANK], op=hvd.Sum, process_set=mine, name="ps.gtopk",
                        compression=hvd.Compression.gtopk(k / m, wire="fp32"))
    idx, vals, _ = ref.gtopk([ys[q].numpy() for q in members], k)
    want = np.zeros(m, np.float32)
    want[idx] = vals
    assert np.array_equal(got.numpy(), want)
    # the optimizer on a set: parameters agree inside it
    torch.manual_seed(2)
    model = torch.nn.Linear(3, 2)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), process_set=mine,
                                   named_parameters=model.named_parameters(),
                                   compression=hvd.Compression.gtopk(0.5))
    model(xs[RANK]).sum().backward()
    opt.step()
    weights = SUITE.comm.allgather(model.weight.detach().numpy().tobytes())
    assert len({weights[q] for q in members}) == 1
    # Horovod: a rank outside the optimizer's set steps on its own gradient
    torch.manual_seed(4)
    local = torch.nn.Linear(3, 1)
    before = local.weight.detach().clone()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(local.parameters(), lr=1.0), process_set=EVEN,
                                   named_parameters=local.named_parameters())
    local(xs[RANK][:1]).sum().backward()
    own_grad = local.weight.grad.clone()
    opt.step()
    if RANK % 2 == 1:
        assert torch.equal(local.weight.detach(), before - own_grad)
    # errors: not a member (this rank alone), duplicates, removed sets
    other = odd if mine is EVEN else EVEN
    if P > 1:
        try:
            hvd.allreduce(torch.ones(1), process_set=other, name="ps.notmine")
            raise AssertionError("expected ValueError")
        except ValueError as e:
            assert f"Rank {RANK} is not a member of the provided process set" in str(e)
    expect_everywhere(ValueError, "Attempted to add a duplicate process set",
                      lambda: hvd.add_process_set(list(range(1, P, 2))))
    assert hvd.remove_process_set(odd) is True and odd.process_set_id is None
    assert hvd.remove_process_set(odd) is False and hvd.remove_process_set(hvd.global_process_set) is False
    if RANK % 2 == 1:
        try:
            hvd.allreduce(torch.ones(1), process_set=odd)
            raise AssertionError("expected ValueError")
        except ValueError as e:
            assert "has not been registered" in str(e)
    mpi_ops._dynamic = False
    try:
        expect_everywhere(ValueError, "Set HOROVOD_DYNAMIC_PROCESS_SETS=1",
                          lambda: hvd.add_process_set([0]))
    finally:
        mpi_ops._dynamic = True
    with_comm = None
    try:
        hvd.ProcessSet(MPI.COMM_WORLD)
    except NotImplementedError as e:
        with_comm = str(e)
    assert with_comm and "list of ranks" in with_comm


@check
def join_stands_in_with_zeros():
    # rank q runs q + 1 steps, then joins: step s has P - s ranks left (Sum of ones)
    for s in range(RANK + 1):
        got = hvd.allreduce(torch.ones(3), op=hvd.Sum, name=f"join.step.{s}")
        assert torch.equal(got, torch.full((3,), float(P - s))), (s, got)
        avg = hvd.allreduce(torch.full((2,), float(P)), name=f"join.avg.{s}")  # Average: still / size
        assert torch.equal(avg, torch.full((2,), float(P - s))), (s, avg)
    assert hvd.join() == P - 1
    # sparse: the joined ranks' zeros take part in the butterfly
    m, k = 2000, 50
    ys = [data(q, (m,), torch.float32, 14) for q in range(P)]
    active = range(P) if P == 1 else range(1, P)
    if RANK in active:
        got = hvd.allreduce(ys[RANK], op=hvd.Sum, name="join.gtopk",
                            compression=hvd.Compression.gtopk(k / m, wire="fp32"))
        xs = [ys[q].numpy() if q in active else np.zeros(m, np.float32) for q in range(P)]
        idx, vals, _ = ref.gtopk(xs, k)
        want = np.zeros(m, np.float32)
        want[idx] = vals
        assert np.array_equal(got.numpy(), want)
    last = hvd.join()
    # ranks 1 .. P - 1 join after the same allreduce, in one negotiation round (the tie goes to
    # the higher rank) or in later ones as they happen to arrive: any of them may be last
    assert last in active, last
    # ops a joined rank cannot stand in for fail on the others with Horovod's text
    if P > 1:
        if RANK == P - 1:
            for fragment, fn in (("Allgather is not supported with Join", lambda: hvd.allgather(torch.ones(1, 2))),
                                 ("Broadcast is not supported with Join", lambda: hvd.broadcast(torch.ones(2), 0)),
                                 ("Reducescatter is not supported with Join",
                                  lambda: hvd.reducescatter(torch.ones(P, 2)))):
                try:
                    fn()
                    raise AssertionError(f"expected: {fragment}")
                except hvd.HorovodInternalError as e:
                    assert fragment in str(e), str(e)
        assert hvd.join() == P - 1
    # everyone back: ops work as before, unnamed ones too (join realigned the names the
    # failed unnamed ops above used on rank P - 1 alone)
    assert torch.equal(hvd.allreduce(torch.ones(2), op=hvd.Sum, name="join.after"), torch.full((2,), float(P)))
    assert hvd.allgather(torch.ones(1, 2)).shape == (P, 2)
    assert torch.equal(hvd.broadcast(torch.full((2,), float(RANK)), 0), torch.zeros(2))


@check
def join_with_the_optimizer_uneven_batches():
    """Rank q has q + 1 batches; after its last it joins, standing in with zeros for the
    others' gradient buckets (sparse gTop-k with residuals, and dense), so step s averages
    the gradients of the ranks still training over all P ranks."""
    for compression in (hvd.Compression.none, hvd.Compression.gtopk(1.0, wire="fp32")):
        torch.manual_seed(3)
        model = torch.nn.Linear(3, 2)
        twin = torch.nn.Linear(3, 2)
        twin.load_state_dict(model.state_dict())
        opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.25),
                                       named_parameters=model.named_parameters(), compression=compression)
        xs = [[data(q, (2, 3), torch.float32, 20 + s) for s in range(q + 1)] for q in range(P)]
        for s in range(RANK + 1):
            opt.zero_grad()
            model(xs[RANK][s]).sum().backward()
            opt.step()
        assert hvd.join() == P - 1
        for s in range(P):  # the reference: the same steps in one process
            grads = []
            for q in range(s, P):
                twin.zero_grad()
                twin(xs[q][s]).sum().backward()
                grads.append([p.grad.clone() for p in twin.parameters()])
            with torch.no_grad():
                for i, p in enumerate(twin.parameters()):
                    p -= 0.25 * (sum(g[i] for g in grads) / P)
            if s == RANK:
                for a, b in zip(model.parameters(), twin.parameters()):
                    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # a real sparsification (k < m, residuals on the training ranks): the stand-ins agree on k
    model = torch.nn.Linear(30, 20)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters(), compression=hvd.Compression.gtopk(0.1))
    for s in range(RANK + 1):
        opt.zero_grad()
        model(data(RANK, (2, 30), torch.float32, 30 + s)).sum().backward()
        opt.step()
        nonzero = int((opt.error_feedback.residual(opt._buckets[0].layout, torch.zeros(620)) != 0).sum())
        assert nonzero > 0  # something was held back
    assert hvd.join() == P - 1


def main() -> int:
    status = SUITE.run()
    hvd.shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())

"""Multi-rank checks of the DDP communication hook (gtopk_mpi.torch.ddp).

``torchrun --standalone --nproc-per-node P tests/suites/ddp_suite.py`` (gloo; the hook's exchanges
on torch.distributed) or ``mpiexec -n P python tests/suites/ddp_suite.py`` (torch.distributed from
MPI's environment, the hook's exchanges through MPI). Every rank regenerates every rank's
batches, and each check compares with the NumPy model in reference.py.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))  # reference, mpi_harness
import gtopk_mpi as g  # noqa: E402
from gtopk_mpi.torch import ddp  # noqa: E402

import reference as ref  # noqa: E402
from mpi_harness import LinkComm, Suite  # noqa: E402

UNDER_MPI = "TORCHELASTIC_RUN_ID" not in os.environ and "LOCAL_RANK" not in os.environ
if UNDER_MPI:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29611")
    ddp.init_process_group_from_mpi("gloo")
    g.init()  # the hook then exchanges through MPI
else:
    dist.init_process_group("gloo")
RANK, P = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
torch.set_num_threads(1)
COMM = g.runtime.comm() if UNDER_MPI else LinkComm(ddp.DistTransport())
SUITE = Suite(COMM)
check = SUITE.check


def model(seed: int = 0, dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 30),
                               torch.nn.ReLU(), torch.nn.Linear(30, 5)).to(dtype)


def batch(step: int, q: int = RANK) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * step + q)
    return torch.randn(16, 20, generator=gen), torch.randint(0, 5, (16,), generator=gen)


def recording(hook, seen: list):
    """The hook, recording each bucket's local gradient (before the exchange) and its names."""

    def recorded(state, bucket):  # (no annotations: DDP checks them as objects)
        seen.append((bucket.index(), bucket.buffer().detach().clone(), state._names(bucket)))
        return hook(state, bucket)

    return recorded


def step(net, opt, i: int) -> None:
    x, y = batch(i)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()


def identical(t: torch.Tensor) -> None:
    SUITE.identical_on_all_ranks(t.detach().cpu().numpy().tobytes())


@check
def hook_equals_the_model_and_conserves():
    """After start_iter plain allreduce steps, each gTop-k step's averaged gradient is the
    reference's gTop-k of every rank's (residual + gradient) / P, and each rank's residual is
    the model's; the whole model's top-k in one exchange (whole_model) or one per bucket."""
    for whole in (True, False):
        net = DDP(model(), bucket_cap_mb=0.004)  # several buckets
        state = ddp.GTopkState(density=0.05, start_iter=2, whole_model=whole, wire="fp32",
                               named_parameters=net.module.named_parameters())
        seen: list = []
        net.register_comm_hook(state, recording(ddp.gtopk_hook, seen))
        opt = torch.optim.SGD(net.parameters(), lr=0.0)  # parameters stay: every rank's gradient is reproducible
        residuals = None
        for i in range(5):
            seen.clear()
            step(net, opt, i)
            if i < 2:
                continue
            ordered = sorted(seen, key=lambda s: s[0])
            groups = [ordered] if whole else [[s] for s in ordered]
            everyone = COMM.allgather([torch.cat([b for _, b, _ in grp]).numpy() for grp in groups])
            if residuals is None:
                residuals = [[np.zeros_like(v) for v in everyone[0]] for _ in range(P)]
            new_res = [[None] * len(groups) for _ in range(P)]
            for j, grp in enumerate(groups):
                xs = [everyone[q][j] for q in range(P)]
                k = max(1, int(np.ceil(0.05 * len(xs[0]))))
                w_idx, w_val, after = ref.gtopk(xs, k, residuals=[residuals[q][j] for q in range(P)], average=True)
                want = np.zeros_like(xs[0])
                want[w_idx] = w_val
                got = torch.cat([p_grad for p_grad in bucket_grads(net, grp)]).numpy()
                assert ref.same_bits(got, want), f"whole={whole} step {i} group {j}: gradient differs from the model"
                names = tuple(n for _, _, ns in grp for n in ns)
                kept = state.feedback.per_parameter()
                assert ref.same_bits(torch.cat([kept[n] for n in names]).numpy(), after[RANK]), f"step {i}: residual"
                for q in range(P):
                    new_res[q][j] = after[q]
            residuals = new_res
        identical(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))


def bucket_grads(net, grp) -> list[torch.Tensor]:
    """The gradients now in the parameters of a group of recorded buckets, in bucket layout."""
    by_name = dict(net.module.named_parameters())
    return [by_name[n].grad.reshape(-1) for _, _, names in grp for n in names]


@check
def first_iterations_are_plain_allreduce():
    """Before start_iter: PyTorch's allreduce hook, bit for bit (DDP's built-in reduction divides
    after summing, so it differs in the last bit at P = 3)."""
    base, hooked = DDP(model(1)), DDP(model(1))
    base.register_comm_hook(None, allreduce_hook)
    hooked.register_comm_hook(ddp.GTopkState(start_iter=3), ddp.gtopk_hook)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (base, hooked)]
    for i in range(3):
        for m, o in zip((base, hooked), opts):
            step(m, o, i)
        for a, b in zip(base.parameters(), hooked.parameters()):
            assert torch.equal(a, b), f"iteration {i}: differs from DDP with the allreduce hook"


@check
def training_keeps_ranks_identical_with_the_compact_wire():
    net = DDP(model(2))
    state = ddp.GTopkState(density=0.01, start_iter=2, density_warmup=[0.25, 0.05], warmup_steps=2,
                           named_parameters=net.module.named_parameters())
    assert state.wire == "bf16"
    net.register_comm_hook(state, ddp.gtopk_hook)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    densities = []
    for i in range(10):
        densities.append(state.current_density() if state.iter >= state.start_iter else 1.0)
        step(net, opt, i)
    assert densities == [1.0, 1.0, 0.25, 0.25, 0.05, 0.05, 0.01, 0.01, 0.01, 0.01], densities
    identical(torch.cat([p.detach().reshape(-1) for p in net.parameters()]))
    assert state.stats and all(s.bytes_sent > 0 for s in state.stats) == (P > 1)


@check
def residuals_survive_a_checkpoint():
    """Train 4 steps, save model + optimizer + hook state, train 3 more; a fresh DDP model with
    the checkpoint loaded (its buckets laid out anew) reaches the same parameters."""
    def make():
        net = DDP(model(3), bucket_cap_mb=0.004)
        state = ddp.GTopkState(density=0.02, start_iter=2, named_parameters=net.module.named_parameters())
        net.register_comm_hook(state, ddp.gtopk_hook)
        return net, state, torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)

    net, state, opt = make()
    for i in range(4):
        step(net, opt, i)
    saved = copy.deepcopy((net.module.state_dict(), opt.state_dict(), state.state_dict()))
    assert saved[2]["residuals"] and any(float(t.abs().sum()) > 0 for t in saved[2]["residuals"].values())
    for i in range(4, 7):
        step(net, opt, i)
    net2, state2, opt2 = make()
    net2.module.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    state2.load_state_dict(saved[2])
    for i in range(4, 7):
        step(net2, opt2, i)
    for (n, a), b in zip(net.module.named_parameters(), net2.module.parameters()):
        assert torch.equal(a, b), f"{n} differs after restoring the checkpoint"


@check
def disagreeing_ranks_raise_in_backward_everywhere():
    if P < 2:
        return
    net = DDP(model(4))
    net.register_comm_hook(ddp.GTopkState(density=0.01 if RANK == 0 else 0.02, start_iter=2), ddp.gtopk_hook)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for i in range(2):
        step(net, opt, i)
    try:
        step(net, opt, 2)
    except Exception as e:  # DDP re-raises the hook's Future error
        text = str(e)
        assert "ranks disagree on the k" in text, text
        texts = COMM.allgather(text.split("ranks disagree")[1][:60])
        assert all(t == texts[0] for t in texts), texts
        return
    raise AssertionError("no error raised")


@check
def bfloat16_model_against_the_reference():
    """A bfloat16 model: each step's averaged gradient is the reference's gTop-k of every rank's
    float32 (residual + gradient), cast to bfloat16; the residuals stay float32 and match."""
    net = DDP(model(seed=4, dtype=torch.bfloat16))
    state = ddp.GTopkState(density=0.05, start_iter=2, density_warmup=[], min_k=0, wire="fp32",
                           named_parameters=net.module.named_parameters())
    seen: list = []
    net.register_comm_hook(state, recording(ddp.gtopk_hook, seen))
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    residuals = None
    for i in range(4):
        seen.clear()
        x, y = batch(i)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x.to(torch.bfloat16)), y).backward()
        opt.step()
        if i < 2:
            continue
        ordered = sorted(seen, key=lambda s: s[0])
        local = torch.cat([b for _, b, _ in ordered]).float().numpy()
        xs = COMM.allgather(local)
        if residuals is None:
            residuals = [np.zeros_like(local) for _ in range(P)]
        k = int(np.ceil(0.05 * len(local)))
        w_idx, w_val, residuals = ref.gtopk(xs, k, residuals=residuals, average=True)
        want = np.zeros_like(local)
        want[w_idx] = w_val
        got = torch.cat(bucket_grads(net, ordered))
        assert got.dtype == torch.bfloat16 and torch.equal(got, torch.from_numpy(want).to(torch.bfloat16)), i
        (r,) = state.feedback.residuals.values()
        assert r.dtype == torch.float32 and ref.same_bits(r.numpy(), residuals[RANK]), f"step {i}: residual"


@check
def k_floor_and_dense_fallback():
    """min_k (GTOPK_MIN_K's default for the hook): k raised to the floor, and a dense exchange
    of residual + gradient (every rank's, averaged, residuals emptied) where the floor's entries
    would outweigh the dense values."""
    for floor, dense in ((40, False), (10**6, True)):
        net = DDP(model(seed=3))
        state = ddp.GTopkState(density=0.0001, start_iter=2, density_warmup=[], min_k=floor, wire="fp32",
                               named_parameters=net.module.named_parameters())
        seen: list = []
        net.register_comm_hook(state, recording(ddp.gtopk_hook, seen))
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        for i in range(4):
            seen.clear()
            step(net, opt, i)
        ordered = sorted(seen, key=lambda s: s[0])
        got = torch.cat(bucket_grads(net, ordered)).numpy()
        identical(torch.from_numpy(got))
        nnz = int(np.count_nonzero(got))
        if dense:
            local = torch.cat([b for _, b, _ in ordered]).numpy()
            want = np.sum(COMM.allgather(local.astype(np.float64)), axis=0) / P
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)  # previous residuals were emptied too
            assert all(not r.any() for r in state.feedback.residuals.values()), "dense exchange left a residual"
        else:
            assert 20 < nnz <= floor, f"min_k={floor}: {nnz} nonzeros"


def main() -> int:
    status = SUITE.run()
    if UNDER_MPI:
        g.shutdown()
    dist.barrier()  # gloo aborts a rank that destroys the group while its peer still sends
    dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())

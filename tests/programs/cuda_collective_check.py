"""Run by tests/test_cuda.py under mpiexec -n 2: the collectives of gtopk_mpi.cuda equal the
CPU collectives on the same data (gTop-k merged and exact, Top-k, dense), the residuals
conserve gradient mass, and bad input raises on every rank instead of hanging.

On one GPU (both ranks share it): CUDA tensors, plus the torch front end, with the kernels
GTOPK_DEVICE_KERNELS picks. With GTOPK_TEST_DEVICE_KERNELS (no GPU): CPU tensors stand in
for device memory (cuda.use_kernels), run by the CUDA kernels on the SIMT emulator
("emulator": all of gtopk_mpi.cuda but the CUDA runtime calls) or by torch's operations
("torch": the path of a GPU install without a toolkit; then also the torch front end, the
optimizer and the DDP hook, against the same on the CPU path, residuals included). Both
include GTOPK_MPI_CUDA_AWARE=1's device buffers handed to MPI; GTOPK_TEST_CUDA_AWARE=1 adds
that on a GPU (CUDA-aware MPI required)."""

import contextlib
import os
import sys

import numpy as np
import torch

import gtopk_mpi as g
from gtopk_mpi import config, cuda

os.environ.update(GTOPK_MIN_K="0", GTOPK_DENSITY_WARMUP="none")  # the algorithm at small k, not the defaults
STAND_IN = config.TEST_DEVICE_KERNELS.get()  # None on a GPU
EMULATED = STAND_IN is not None  # CPU tensors stand in for device memory
cuda.use_kernels(STAND_IN)
DEV = "cpu" if EMULATED else "cuda"

g.init()
r, p = g.rank(), g.size()
comm = g.runtime.comm()
m = config.TEST_M.get()  # default above 16 x the selection's sample
k = max(1, m // 1000)


def dev(t: torch.Tensor) -> torch.Tensor:
    return t.clone() if EMULATED else t.cuda()


def same(a, b) -> bool:
    a = a.cpu().numpy() if isinstance(a, torch.Tensor) else a
    return a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def check_dense(x: torch.Tensor, fn) -> None:
    for dtype in (torch.float32, torch.float16, torch.int64):
        xd = (x * 100).to(dtype)
        assert same(fn(dev(xd), average=True), g.dense_allreduce(xd.numpy(), average=True)), dtype


def check_bad_input_raises_everywhere(fns) -> None:
    """One rank's bad input: the same error on every rank, no hang."""
    for fn in fns:
        bad = torch.ones(m, device=DEV, dtype=torch.bfloat16 if r == p - 1 else torch.float32)
        try:
            fn(bad, k=k)
            raise AssertionError("no error")
        except ValueError as e:
            assert f"rank {p - 1}" in str(e) and "bfloat16" in str(e), e


SELECTIONS = [0]  # selections the stand-in's kernels ran: the path under test was taken
if EMULATED:
    _kern = cuda.kernels_for("cpu")
    _select = _kern.select

    def _counted(*args, **kwargs):
        SELECTIONS[0] += 1
        return _select(*args, **kwargs)

    _kern.select = _counted  # type: ignore[method-assign]


def through_stand_in(fn, *args, **kwargs):
    """fn(*args, **kwargs), asserting that it ran the stand-in's selection (on a GPU: just fn)."""
    before = SELECTIONS[0]
    out = fn(*args, **kwargs)
    assert not EMULATED or SELECTIONS[0] > before, "the stand-in's kernels never ran"
    return out


@contextlib.contextmanager
def cpu_path():
    """Inside: CPU tensors take the CPU path (the reference for the stand-in's tensors)."""
    cuda.use_kernels(None)
    try:
        yield
    finally:
        cuda.use_kernels(STAND_IN)


def host(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().clone()


def total(*parts) -> float:
    return comm.allreduce(float(sum(t.double().sum().item() for t in parts)))


res_gpu, res_cpu = torch.zeros(m, device=DEV), np.zeros(m, np.float32)
tres_gpu, tres_cpu = torch.zeros(m, device=DEV), np.zeros(m, np.float32)
for step in range(3):
    x = torch.randn(m, generator=torch.Generator().manual_seed(100 * step + r))
    before = total(res_gpu, x)
    a = g.gtopk_allreduce(dev(x), k=k, residual=res_gpu)
    b = g.gtopk_allreduce(x.numpy(), k=k, residual=res_cpu)
    assert a.indices.device.type == DEV and same(a.indices, b.indices) and same(a.values, b.values)
    assert same(res_gpu, res_cpu)
    after = total(res_gpu) + float(a.values.double().sum())
    assert abs(after - before) < 1e-2 * (1 + abs(before)), (after, before)
    assert same(a.to_dense(), b.to_dense())

    a = g.gtopk_allreduce(dev(x), k=k, values="exact", average=True)
    b = g.gtopk_allreduce(x.numpy(), k=k, values="exact", average=True)
    assert same(a.indices, b.indices) and same(a.values, b.values)

    r16_gpu, r16_cpu = dev(torch.zeros(m)), np.zeros(m, np.float32)  # 16-bit wire: rounding errors kept alike
    a = g.gtopk_allreduce(dev(x), k=k, residual=r16_gpu, wire="bf16")
    b = g.gtopk_allreduce(x.numpy(), k=k, residual=r16_cpu, wire="bf16")
    assert same(a.indices, b.indices) and same(a.values, b.values) and same(r16_gpu, r16_cpu)

    a = g.topk_allreduce(dev(x), k=k, residual=tres_gpu, average=True)
    b = g.topk_allreduce(x.numpy(), k=k, residual=tres_cpu, average=True)
    assert a.values.device.type == DEV and same(a.indices, b.indices) and same(a.values, b.values)
    assert same(tres_gpu, tres_cpu)
    check_dense(x, g.dense_allreduce)
check_bad_input_raises_everywhere((g.gtopk_allreduce, g.topk_allreduce))

if EMULATED or config.TEST_CUDA_AWARE.get():  # device buffers straight to MPI
    os.environ["GTOPK_MPI_CUDA_AWARE"] = "1"
    res_gpu, res_cpu = torch.zeros(m, device=DEV), np.zeros(m, np.float32)
    tres_gpu, tres_cpu = torch.zeros(m, device=DEV), np.zeros(m, np.float32)
    for step in range(2):
        x = torch.randn(m, generator=torch.Generator().manual_seed(1000 * step + r))
        a = g.gtopk_allreduce(dev(x), k=k, residual=res_gpu, average=True, wire="fp16" if step else "fp32")
        b = g.gtopk_allreduce(x.numpy(), k=k, residual=res_cpu, average=True, wire="fp16" if step else "fp32")
        assert a.values.device.type == DEV and same(a.indices, b.indices) and same(a.values, b.values)
        assert same(res_gpu, res_cpu) and same(a.carried, b.carried)
        a = g.gtopk_allreduce(dev(x).half(), k=k, values="exact")
        b = g.gtopk_allreduce(x.numpy().astype(np.float16), k=k, values="exact")
        assert same(a.indices, b.indices) and same(a.values, b.values)
        a = g.topk_allreduce(dev(x), k=k, residual=tres_gpu)
        b = g.topk_allreduce(x.numpy(), k=k, residual=tres_cpu)
        assert same(a.indices, b.indices) and same(a.values, b.values) and same(tres_gpu, tres_cpu)
        check_dense(x, g.dense_allreduce)
    check_bad_input_raises_everywhere((g.gtopk_allreduce, g.topk_allreduce))
    del os.environ["GTOPK_MPI_CUDA_AWARE"]

if not EMULATED:  # CuPy arrays in, CuPy arrays out
    try:
        import cupy
    except ImportError:
        cupy = None
    if cupy is not None:
        x = torch.randn(m, generator=torch.Generator().manual_seed(5 + r)).numpy()
        a = g.gtopk_allreduce(cupy.asarray(x), k=k)
        b = g.gtopk_allreduce(x, k=k)
        assert isinstance(a.values, cupy.ndarray) and same(cupy.asnumpy(a.indices), b.indices)
        assert same(cupy.asnumpy(a.values), b.values) and same(cupy.asnumpy(a.to_dense()), b.to_dense())
        assert same(cupy.asnumpy(g.dense_allreduce(cupy.asarray(x))), g.dense_allreduce(x))

if not EMULATED or STAND_IN == "torch":  # the torch front end on device tensors: same results as on the CPU
    import gtopk_mpi.torch as hvd

    hvd.init()
    t = torch.randn(50_000, generator=torch.Generator().manual_seed(7 + r))
    for comp in (hvd.Compression.gtopk(density=0.01), hvd.Compression.topk(density=0.01)):
        on_dev = through_stand_in(hvd.allreduce, dev(t), compression=comp, name=f"gpu.{comp.algorithm}")
        with cpu_path():
            on_cpu = hvd.allreduce(t, compression=comp, name=f"cpu.{comp.algorithm}")
        assert on_dev.device.type == DEV and same(on_dev, on_cpu.numpy()), comp.algorithm

    def train(device: str, steps: int = 3) -> tuple[np.ndarray, dict]:
        """A few DistributedOptimizer steps (gTop-k, error feedback); parameters, residuals."""
        torch.manual_seed(0)
        model = torch.nn.Linear(100, 10).to(device)
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                       named_parameters=model.named_parameters(),
                                       compression=hvd.Compression.gtopk(density=0.05))
        for i in range(steps):
            opt.zero_grad()
            x = torch.randn(32, 100, generator=torch.Generator().manual_seed(10 * i + r))
            model(x.to(device)).square().mean().backward()
            opt.step()
        flat = torch.cat([host(q).reshape(-1) for q in model.parameters()]).numpy()
        assert opt.error_feedback is not None
        return flat, {key: v.numpy() for key, v in opt.error_feedback.per_parameter().items()}

    flat, residuals = through_stand_in(train, DEV)
    everyone = comm.allgather(flat)
    assert all(np.array_equal(everyone[0].view(np.uint32), f.view(np.uint32)) for f in everyone)
    if EMULATED:
        with cpu_path():
            flat_cpu, residuals_cpu = train("cpu")
        assert same(flat, flat_cpu) and residuals.keys() == residuals_cpu.keys()
        assert all(same(residuals[key], residuals_cpu[key]) for key in residuals)

    if EMULATED:  # the DDP hook: gTop-k steps after start_iter, on the stand-in and on the CPU path
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP

        from gtopk_mpi.torch import ddp

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29623")
        ddp.init_process_group_from_mpi("gloo")

        def ddp_train(steps: int = 4) -> tuple[np.ndarray, dict]:
            torch.manual_seed(0)
            net = DDP(torch.nn.Sequential(torch.nn.Linear(40, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5)))
            state = ddp.GTopkState(density=0.05, start_iter=2, wire="fp32",
                                   named_parameters=net.module.named_parameters())
            net.register_comm_hook(state, ddp.gtopk_hook)
            opt = torch.optim.SGD(net.parameters(), lr=0.1)
            for i in range(steps):
                gen = torch.Generator().manual_seed(100 * i + r)
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(torch.randn(16, 40, generator=gen)),
                                                  torch.randint(0, 5, (16,), generator=gen)).backward()
                opt.step()
            flat = torch.cat([host(q).reshape(-1) for q in net.parameters()]).numpy()
            return flat, {n: host(v).numpy() for n, v in state.state_dict()["residuals"].items()}

        flat, residuals = through_stand_in(ddp_train)
        with cpu_path():
            flat_cpu, residuals_cpu = ddp_train()
        assert same(flat, flat_cpu) and residuals.keys() == residuals_cpu.keys() and residuals
        assert all(same(residuals[n], residuals_cpu[n]) for n in residuals)
        assert any(np.any(v != 0) for v in residuals.values())  # the gTop-k steps kept something back
        dist.destroy_process_group()
    hvd.shutdown()

if r == 0:
    print("CUDA COLLECTIVE OK")
g.shutdown()
sys.exit(0)

"""Run by tests/test_cuda.py under mpiexec -n 2: the collectives of gtopk_mpi.cuda equal the
CPU collectives on the same data (gTop-k merged and exact, Top-k, dense), the residuals
conserve gradient mass, and bad input raises on every rank instead of hanging.

On one GPU (both ranks share it): CUDA tensors, plus the torch front end. With
GTOPK_TEST_EMULATE=1 (no GPU): CPU tensors stand in for device memory and the kernels run
on the SIMT emulator (cuda.use_emulator), so the collectives' bodies on a DeviceSpace are
exercised (all of gtopk_mpi.cuda but the CUDA runtime calls), GTOPK_MPI_CUDA_AWARE=1's
device buffers handed to MPI included. GTOPK_TEST_CUDA_AWARE=1 adds that on a GPU
(CUDA-aware MPI required)."""

import os
import sys

import numpy as np
import torch

import gtopk_mpi as g
from gtopk_mpi import config, cuda

EMULATED = config.TEST_EMULATE.get()
if EMULATED:
    cuda.use_emulator()
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

if not EMULATED:  # the torch front end on CUDA tensors: same results as on the CPU
    import gtopk_mpi.torch as hvd

    hvd.init()
    t = torch.randn(50_000, generator=torch.Generator().manual_seed(7 + r))
    for comp in (hvd.Compression.gtopk(density=0.01), hvd.Compression.topk(density=0.01)):
        on_gpu = hvd.allreduce(t.cuda(), compression=comp, name=f"gpu.{comp.algorithm}")
        on_cpu = hvd.allreduce(t, compression=comp, name=f"cpu.{comp.algorithm}")
        assert on_gpu.is_cuda and same(on_gpu, on_cpu.numpy()), comp.algorithm
    model = torch.nn.Linear(100, 10).cuda()
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters(),
                                   compression=hvd.Compression.gtopk(density=0.05))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(32, 100, device="cuda")).square().mean().backward()
        opt.step()
    flat = torch.cat([q.detach().reshape(-1) for q in model.parameters()]).cpu().numpy()
    everyone = comm.allgather(flat)
    assert all(np.array_equal(everyone[0].view(np.uint32), f.view(np.uint32)) for f in everyone)
    hvd.shutdown()

if r == 0:
    print("CUDA COLLECTIVE OK")
g.shutdown()
sys.exit(0)

"""Run by tests/test_cuda.py under mpiexec -n 2 on one GPU: the collective on CUDA tensors
equals the CPU collective on the same data, and the residual conserves gradient mass."""

import sys

import numpy as np
import torch

import gtopk_mpi as g

g.init()
r, p = g.rank(), g.size()
m, k = 1_000_000, 1_000
res_gpu = torch.zeros(m, device="cuda")
res_cpu = np.zeros(m, np.float32)
for step in range(5):
    x = torch.randn(m, generator=torch.Generator().manual_seed(100 * step + r))
    before = g.runtime.comm().allreduce(float((res_gpu.double().sum() + x.double().sum()).item()))
    a = g.gtopk_allreduce(x.cuda(), k=k, residual=res_gpu)
    b = g.gtopk_allreduce(x.numpy(), k=k, residual=res_cpu)
    assert a.indices.is_cuda and np.array_equal(a.indices.cpu().numpy(), b.indices)
    assert np.array_equal(a.values.cpu().numpy(), b.values)
    assert np.array_equal(res_gpu.cpu().numpy(), res_cpu)
    after = g.runtime.comm().allreduce(float(res_gpu.double().sum().item())) + float(a.values.double().sum())
    assert abs(after - before) < 1e-2 * (1 + abs(before)), (after, before)
    assert torch.equal(a.to_dense().cpu(), torch.from_numpy(b.to_dense()))
if r == 0:
    print("CUDA COLLECTIVE OK")
g.shutdown()
sys.exit(0)

"""The CUDA path against the CPU path, with the custom CUDA kernels and with torch's operations
(GTOPK_DEVICE_KERNELS=cuda, torch). GPU tests skip without a GPU; the build checks run everywhere."""

from __future__ import annotations

import numpy as np
import pytest

import gtopk_mpi
from gtopk_mpi import _C, cuda

from mpi_launch import run

torch = pytest.importorskip("torch")
gpu = pytest.mark.skipif(not cuda.available(), reason="needs a CUDA build and a GPU")


@pytest.fixture(params=["cuda", "torch"], autouse=True)
def device_kernels(request, monkeypatch):
    """Every GPU test twice: the custom CUDA kernels, then torch's operations (torch_kernels.py)."""
    monkeypatch.setenv("GTOPK_DEVICE_KERNELS", request.param)
    return request.param


@pytest.mark.skipif(not cuda.built() or cuda.available(), reason="only for a CUDA build on a machine without a GPU")
def test_cuda_build_imports_and_fails_cleanly_without_a_driver():
    with pytest.raises(RuntimeError, match="gtopk_mpi CUDA"):
        _C.cuda_select_topk(1, 0, 0, 10, 3, False, 0, 0, 0)


def cpu_select(x: torch.Tensor, k: int):
    host = x.float().cpu().numpy() if x.dtype == torch.bfloat16 else x.cpu().numpy()
    return gtopk_mpi.select_topk(host, k)


CASES = ["normal", "ties", "special", "zeros", "sample_overestimates", "sample_underestimates"]


def make(case: str, m: int, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, generator=g)
    if case == "ties":
        x = torch.round(x * 4) / 4
    elif case == "special":
        x[::997] = float("nan")
        x[5::1013] = float("inf")
        x[7::1019] = -float("inf")
    elif case == "zeros":
        x = torch.zeros(m)
        x[::50_000] = 1.0
    elif case == "sample_overestimates":
        x = x * 1e-3
        x[torch.tensor(_C.sample_plan(m, m // 1000)["block_starts"])] = 100.0
    elif case == "sample_underestimates":
        plan = _C.sample_plan(m, m // 1000)
        x = torch.ones(m)
        for s in plan["block_starts"]:
            x[s : s + plan["block_len"]] = torch.randn(plan["block_len"], generator=g) * 1e-3
    return x.to(dtype).cuda()


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_select_matches_cpu(dtype, case):
    m = 2_000_000
    for k in (1, m // 1000, m // 10):
        x = make(case, m, dtype)
        idx, val = cuda.select_topk(x, k)
        c_idx, _ = cpu_select(x, k)
        assert np.array_equal(idx.cpu().numpy(), c_idx), (case, k)
        assert torch.equal(val.view(torch.int16 if dtype != torch.float32 else torch.int32),
                           x[idx.long()].view(torch.int16 if dtype != torch.float32 else torch.int32))


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_error_feedback_matches_cpu(dtype):
    m, k = 3_000_000, 3_000
    x = torch.randn(m, dtype=torch.float32).to(dtype).cuda()
    r = torch.randn(m, dtype=torch.float32).to(dtype).cuda()
    r_cpu = r.cpu().numpy().copy()
    idx, val = cuda.select_topk(x, k, residual=r)
    c_idx, c_val = gtopk_mpi.select_topk_ef(r_cpu, x.cpu().numpy(), k)
    assert np.array_equal(r.cpu().numpy().view(np.uint16 if dtype == torch.float16 else np.uint32),
                          r_cpu.view(np.uint16 if dtype == torch.float16 else np.uint32))
    assert np.array_equal(idx.cpu().numpy(), c_idx) and np.array_equal(val.cpu().numpy(), c_val)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_merge_matches_cpu_and_is_symmetric(dtype):
    g = torch.Generator().manual_seed(1)
    m, n, k = 1_000_000, 25_557, 25_557
    ia = torch.sort(torch.randperm(m, generator=g)[:n]).values.int()
    ib = torch.sort(torch.randperm(m, generator=g)[:n]).values.int()
    va, vb = torch.randn(n, generator=g).to(dtype), torch.randn(n, generator=g).to(dtype)
    d = [t.cuda() for t in (ia, va, ib, vb)]
    gi, gv = cuda.merge_topk(*d, k)
    si, sv = cuda.merge_topk(d[2], d[3], d[0], d[1], k)
    ci, cv = gtopk_mpi.merge_topk(ia.numpy(), va.numpy(), ib.numpy(), vb.numpy(), k)
    assert np.array_equal(gi.cpu().numpy(), ci) and np.array_equal(gv.cpu().numpy(), cv)
    assert torch.equal(gi, si) and torch.equal(gv, sv)


@gpu
@pytest.mark.parametrize("case", ["normal", "ties", "sample_overestimates"])
def test_gpu_equals_the_emulator(case):
    """The emulator (tests/test_cuda_emulated.py) stands for the GPU only if they agree."""
    from gtopk_mpi import _cuda_emu

    m, k = 1_100_000, 1_100
    x = make(case, m, torch.float32)
    r = torch.randn(m, generator=torch.Generator().manual_seed(3)).cuda()
    r_emu = r.cpu().numpy().copy()
    idx, val = cuda.select_topk(x, k, residual=r)
    e_idx, e_val = _cuda_emu.select_topk(x.cpu().numpy(), k, residual=r_emu)
    assert np.array_equal(idx.cpu().numpy(), e_idx) and np.array_equal(val.cpu().numpy(), e_val)
    assert np.array_equal(r.cpu().numpy(), r_emu)


@gpu
def test_cupy_arrays_in_and_out():
    cupy = pytest.importorskip("cupy")
    x = cupy.asarray(make("ties", 2_000_000, torch.float32).cpu().numpy())
    with cupy.cuda.Stream(non_blocking=True) as stream:  # the kernels follow CuPy's current stream
        idx, val = cuda.select_topk(x, 2000)
        stream.synchronize()
    assert isinstance(idx, cupy.ndarray) and isinstance(val, cupy.ndarray)
    c_idx, c_val = gtopk_mpi.select_topk(cupy.asnumpy(x), 2000)
    assert np.array_equal(cupy.asnumpy(idx), c_idx) and np.array_equal(cupy.asnumpy(val), c_val)
    r = cupy.ones_like(x)
    cuda.select_topk(x, 2000, residual=r)  # r += x in place, through the DLPack view
    assert np.array_equal(cupy.asnumpy(r), cupy.asnumpy(x) + np.float32(1))
    dense = cuda.to_dense(idx, val, x.size)
    want = np.zeros(x.size, np.float32)
    want[c_idx] = c_val
    assert isinstance(dense, cupy.ndarray) and np.array_equal(cupy.asnumpy(dense), want)


@gpu
def test_collective_on_two_ranks_sharing_one_gpu():
    proc = run(2, ["tests/programs/cuda_collective_check.py"], timeout=240)
    assert proc.returncode == 0 and "CUDA COLLECTIVE OK" in proc.stdout, proc.stdout + proc.stderr

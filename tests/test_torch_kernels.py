"""The device kernels made of torch's operations (gtopk_mpi/cuda/torch_kernels.py) on CPU
tensors standing in for device memory (``cuda.use_kernels("torch")``), against the CPU
kernels and the NumPy reference, bit for bit: the same operations run on a GPU."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from test_cuda_emulated import FUSED_CASES, LARGE, from_bf16, fused_inputs, make, same, small_inputs, to_bf16

from gtopk_mpi import _C, cuda, merge_topk, select_topk, select_topk_ef
from gtopk_mpi.cuda import kernels as K
from gtopk_mpi.cuda.torch_kernels import TorchKernels

import reference as ref
from test_kernels import sparse

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def torch_path():
    cuda.use_kernels("torch")
    yield
    cuda.use_kernels(None)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.copy())


def bf16(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(to_bf16(a).view(np.int16)).view(torch.bfloat16)


def host(x: torch.Tensor) -> np.ndarray:
    return x.view(torch.int16).numpy().view(np.uint16) if x.dtype == torch.bfloat16 else x.numpy()


def got(pair) -> tuple[np.ndarray, np.ndarray]:
    return pair[0].numpy(), host(pair[1])


CASES = ["normal", "ties", "special", "few_nonzero", "constant", "sample_overestimates", "sample_underestimates"]


@pytest.mark.parametrize("case", CASES)
def test_select_float32_matches_cpu(case):
    k = LARGE // 1000
    x = make(case, LARGE, k)
    assert same(got(cuda.select_topk(t(x), k)), select_topk(x, k))


@pytest.mark.parametrize("k", [1, 2, 64, LARGE // 10, LARGE - 1, LARGE, LARGE + 5])
def test_select_any_k(k):
    x = make("ties", LARGE, max(k, 2))
    assert same(got(cuda.select_topk(t(x), k)), select_topk(x, k))


def test_select_float16_and_bfloat16():
    k = LARGE // 1000
    for case in ("normal", "ties", "special"):
        x = make(case, LARGE, k)
        h = x.astype(np.float16)
        assert same(got(cuda.select_topk(t(h), k)), select_topk(h, k)), case
        if case != "special":  # to_bf16 is for NaN-free input
            idx, val = got(cuda.select_topk(bf16(x), k))
            want, _ = select_topk(from_bf16(to_bf16(x)), k)
            assert np.array_equal(idx, want) and np.array_equal(val, to_bf16(x)[want]), case


def test_select_small_inputs_against_reference():
    for x, k in small_inputs():
        assert same(got(cuda.select_topk(t(x), k)), ref.select(x, k)), (x.dtype, x.size, k)


def test_select_nan_payloads_and_signed_zeros_are_one_key_each():
    x = np.array([0.0, -0.0, 1.0, -1.0, np.nan, -np.nan, np.inf, 2.0], np.float32)
    x[5] = np.frombuffer(np.uint32(0xFFC00001).tobytes(), np.float32)[0]  # another NaN payload
    for k in range(1, 9):
        assert same(got(cuda.select_topk(t(x), k)), select_topk(x, k)), k


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("m,k", FUSED_CASES)
def test_fused_error_feedback_matches_cpu(dtype, m, k):
    x, r = fused_inputs(dtype, m)
    r_torch, r_cpu = t(r), r.copy()
    assert same(got(cuda.select_topk(t(x), k, residual=r_torch)), select_topk_ef(r_cpu, x, k))
    assert ref.same_bits(r_torch.numpy(), r_cpu)  # every entry holds residual + x


def test_select_int64_indices():
    x = make("ties", LARGE, 1100)
    idx, val = torch.empty(1100, dtype=torch.int64), torch.empty(1100)
    TorchKernels(cpu_stands_in=True).select(t(x), None, 1100, idx, val)
    want = select_topk(x, 1100)
    assert np.array_equal(idx.numpy(), want[0]) and ref.same_bits(val.numpy(), want[1])


def test_select_rejects_bad_input():
    x = torch.ones(10)
    with pytest.raises(ValueError, match="k must be >= 1"):
        cuda.select_topk(x, 0)
    with pytest.raises(ValueError, match="residual"):
        cuda.select_topk(x, 1, residual=torch.ones(9))
    with pytest.raises(ValueError, match="dtype"):
        cuda.select_topk(x.double(), 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_merge_matches_cpu_and_is_symmetric(dtype):
    rng = np.random.default_rng(12)
    k = 25_557
    a, b = sparse(rng, 1_000_000, k, dtype), sparse(rng, 1_000_000, k, dtype)
    b[1][::3] = np.round(b[1][::3])  # ties between sets and inside one
    want = merge_topk(*a, *b, k)
    assert same(got(cuda.merge_topk(t(a[0]), t(a[1]), t(b[0]), t(b[1]), k)), want)
    assert same(got(cuda.merge_topk(t(b[0]), t(b[1]), t(a[0]), t(a[1]), k)), want)
    for small_k in (1, 2 * k, 3 * k):
        assert same(got(cuda.merge_topk(t(a[0]), t(a[1]), t(b[0]), t(b[1]), small_k)), merge_topk(*a, *b, small_k))


def test_merge_bfloat16():
    rng = np.random.default_rng(13)
    a, b = sparse(rng, 3000, 500, np.float32), sparse(rng, 3000, 500, np.float32)
    a, b = (a[0], np.round(a[1] * 8)), (b[0], np.round(b[1] * 8))  # small integers: exact sums in bfloat16
    want = ref.merge(a, b, 300, np.float32)
    idx, val = got(cuda.merge_topk(t(a[0]), bf16(a[1]), t(b[0]), bf16(b[1]), 300))
    assert np.array_equal(idx, want[0]) and np.array_equal(val, to_bf16(want[1]))


def test_merge_nan_sum_is_symmetric_and_canonical():
    a = (np.array([1, 2], np.int32), np.array([np.nan, np.inf], np.float32))
    b = (np.array([1, 2], np.int32), np.array([-np.nan, -np.inf], np.float32))
    ab = got(cuda.merge_topk(*map(t, a), *map(t, b), 2))
    ba = got(cuda.merge_topk(*map(t, b), *map(t, a), 2))
    assert same(ab, ba) and same(ab, merge_topk(*a, *b, 2))


def test_merge_of_empty_sets():
    a = sparse(np.random.default_rng(1), 100, 10, np.float32)
    e = (np.zeros(0, np.int32), np.zeros(0, np.float32))
    assert same(got(cuda.merge_topk(*map(t, a), *map(t, e), 4)), merge_topk(*a, *e, 4))
    assert got(cuda.merge_topk(*map(t, e), *map(t, e), 4))[0].size == 0


def test_merge_rejects_unsorted():
    v = torch.ones(3)
    with pytest.raises(ValueError, match="first indices must be strictly ascending"):
        cuda.merge_topk(torch.tensor([3, 1, 5], dtype=torch.int32), v, torch.tensor([1, 2, 3], dtype=torch.int32), v, 2)
    with pytest.raises(ValueError, match="second indices must be strictly ascending"):
        cuda.merge_topk(torch.tensor([1, 2, 3], dtype=torch.int32), v, torch.tensor([1, 1, 3], dtype=torch.int32), v, 2)


def test_scatter_and_zero_at():
    rng = np.random.default_rng(14)
    idx, val = sparse(rng, 10_000, 700, np.float32)
    dense = cuda.to_dense(t(idx), t(val), 10_000)
    want = np.zeros(10_000, np.float32)
    want[idx] = val
    assert ref.same_bits(dense.numpy(), want)
    cuda.kernels_for("cpu").zero_at(t(idx[::2]), dense)
    want[idx[::2]] = 0
    assert ref.same_bits(dense.numpy(), want)


def test_device_kernels_knob_picks_and_logs_once(monkeypatch, caplog):
    """GTOPK_DEVICE_KERNELS on a device without custom kernels ("meta" stands in for one)."""
    cuda.use_kernels(None)
    meta = torch.device("meta")
    K._chosen.clear()
    with caplog.at_level(logging.INFO, logger="gtopk_mpi.cuda.kernels"):
        for _ in range(3):
            assert isinstance(cuda.kernels_for(meta), TorchKernels)
    assert len([r for r in caplog.records if "torch operations" in r.message]) == 1, caplog.text
    assert "no custom kernels for meta devices" in caplog.text
    monkeypatch.setenv("GTOPK_DEVICE_KERNELS", "torch")
    assert isinstance(cuda.kernels_for(meta), TorchKernels)
    monkeypatch.setenv("GTOPK_DEVICE_KERNELS", "cuda")
    if not _C.__dict__.get("has_cuda", False):
        with pytest.raises(RuntimeError, match="built without CUDA.*GTOPK_DEVICE_KERNELS=cuda"):
            cuda.kernels_for(meta).usable()
    monkeypatch.setenv("GTOPK_DEVICE_KERNELS", "gpu")
    with pytest.raises(ValueError, match="GTOPK_DEVICE_KERNELS"):
        cuda.kernels_for(meta)


def test_use_kernels_rejects_unknown_names():
    with pytest.raises(ValueError, match="emulator.*torch"):
        cuda.use_kernels("opencl")


def test_auto_falls_back_to_torch_where_the_custom_kernels_cannot_run(monkeypatch, caplog):
    """auto on a CUDA device: a build without CUDA, or custom kernels that fail their probe
    (here: this torch has no CUDA), give torch's operations, with the reason logged."""
    cuda.use_kernels(None)
    dev = torch.device("cuda", 0)
    monkeypatch.setattr(K, "built", lambda: False)
    K._chosen.clear()
    with caplog.at_level(logging.INFO, logger="gtopk_mpi.cuda.kernels"):
        assert isinstance(cuda.kernels_for(dev), TorchKernels)
    assert "built without CUDA" in caplog.text
    if not torch.cuda.is_available():
        monkeypatch.setattr(K, "built", lambda: True)
        K._chosen.clear()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="gtopk_mpi.cuda.kernels"):
            assert isinstance(cuda.kernels_for(dev), TorchKernels)
        assert "do not run on cuda:0" in caplog.text and "custom kernels failed" in caplog.text
    K._chosen.clear()

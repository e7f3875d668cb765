"""The CUDA path's code on the CPU: csrc/cuda/topk_kernels.h (the kernels and the host
sequence of launches that kernels.cu runs on a GPU) executed by the SIMT emulator of
csrc/emu (gtopk_mpi._cuda_emu), against the CPU path and the NumPy reference, bit for bit.

What this does not check: GPU-only behaviour (real concurrency between blocks, the memory
model, the CUDA runtime calls of kernels.cu) and speed; tests/test_cuda.py does, on a GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gtopk_mpi import _C, merge_topk, select_topk, select_topk_ef
from gtopk_mpi import _cuda_emu as emu

import reference as ref
from mpi_launch import ROOT, run
from test_kernels import sparse  # the merge and fuzz tests live there, for CPU and emulated GPU alike

LARGE = 1_100_000  # above 16 x the 65,536-key sample: the sampled-threshold path
SAMPLE_PATH = 5  # launches: threshold, filter, scan, gather, finish
FALLBACK = SAMPLE_PATH + 6  # then histogram, its threshold, filter, scan, gather, finish
WHOLE_GRID = FALLBACK - 1 + 10  # the finish for many candidates: start, 3 x (histogram, pick), 3 tile steps


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even (NaN-free input)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def make(case: str, m: int, k: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    x = rng.standard_normal(m).astype(np.float32)
    if case == "ties":
        x = np.round(x * 4) / 4
    elif case == "special":
        x[::997] = np.nan
        x[5::1013] = np.inf
        x[7::1019] = -np.inf
    elif case == "few_nonzero":  # fewer nonzeros than k: zeros fill up from the lowest index
        x = np.zeros(m, np.float32)
        x[rng.choice(m, k // 2, replace=False)] = 1 + rng.random(k // 2, dtype=np.float32)
    elif case == "constant":
        x = np.full(m, 0.5, np.float32)
    elif case == "sample_overestimates":  # large values only where the sample looks: < k above t
        x *= 1e-3
        x[_C.sample_plan(m, k)["block_starts"]] = 100.0
    elif case == "sample_underestimates":  # large values everywhere but the sample: over the cap
        plan = _C.sample_plan(m, k)
        x = np.ones(m, np.float32)
        for s in plan["block_starts"]:
            x[s : s + plan["block_len"]] = rng.standard_normal(plan["block_len"]).astype(np.float32) * 1e-3
    return x


def small_inputs():
    """(x, k): short vectors, float32 and float16, half their magnitudes repeated (the tie rule
    decides), for the selection against reference.py."""
    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float16):
        for m, k in [(1, 1), (7, 3), (100, 1), (100, 99), (5000, 50), (9000, 4500)]:
            x = rng.standard_normal(m).astype(dtype)
            x[::2] = np.round(x[::2] * 4) / 4
            yield x, k


FUSED_CASES = [(LARGE, 1100), (LARGE, 200_000), (3000, 30), (50, 80)]  # (m, k) of the fused error feedback


def fused_inputs(dtype, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(gradient, residual) of length m for the fused error-feedback selection."""
    rng = np.random.default_rng(9)
    return rng.standard_normal(m).astype(dtype), (rng.standard_normal(m) * 0.5).astype(dtype)


def same(got, want) -> bool:
    return np.array_equal(got[0], want[0]) and ref.same_bits(got[1], want[1])


PATHS = {"normal": SAMPLE_PATH, "ties": SAMPLE_PATH, "special": SAMPLE_PATH, "few_nonzero": WHOLE_GRID,
         "constant": WHOLE_GRID, "sample_overestimates": FALLBACK, "sample_underestimates": WHOLE_GRID}


@pytest.mark.parametrize("case", list(PATHS))
def test_select_float32_every_path(case):
    k = LARGE // 1000
    x = make(case, LARGE, k)
    got = emu.select_topk(x, k)
    assert emu.last_launches() == PATHS[case], "the case no longer takes the path it was written for"
    assert same(got, select_topk(x, k))


@pytest.mark.parametrize("k", [1, 2, 64, LARGE // 10, LARGE - 1, LARGE, LARGE + 5])
def test_select_float32_any_k(k):
    x = make("ties", LARGE, max(k, 2))
    assert same(emu.select_topk(x, k), select_topk(x, k))


def test_select_float16_and_bfloat16():
    k = LARGE // 1000
    for case in ("normal", "ties", "sample_overestimates"):
        x = make(case, LARGE, k)
        h = x.astype(np.float16)
        assert same(emu.select_topk(h, k), select_topk(h, k)), case
        b = to_bf16(x)
        idx, val = emu.select_topk(b, k, bf16=True)
        want_idx, _ = select_topk(from_bf16(b), k)  # bfloat16 -> float32 is exact and keeps the order
        assert np.array_equal(idx, want_idx) and np.array_equal(val, b[want_idx]), case


@pytest.mark.parametrize("case", ["normal", "ties", "special", "few_nonzero", "constant"])
def test_select_finishing_on_the_whole_grid(case):
    """finish_many (grid-wide radix select, ordered write by tiles), reached with short inputs
    by lowering the one-block limit to 0; three tiles' worth and more of candidates."""
    m, k = 300_000, 3_000
    x = make(case, m, k)
    got = emu.select_topk(x, k, one_block_max=0)
    assert emu.last_launches() == WHOLE_GRID - SAMPLE_PATH  # no sample at this length
    assert same(got, select_topk(x, k))
    if case == "ties":
        h, b = x.astype(np.float16), to_bf16(x)
        assert same(emu.select_topk(h, k, one_block_max=0, idx64=True), select_topk(h, k))
        idx, val = emu.select_topk(b, k, bf16=True, one_block_max=0)
        want, _ = select_topk(from_bf16(b), k)
        assert np.array_equal(idx, want) and np.array_equal(val, b[want])
    if case == "few_nonzero":  # and fused with a residual
        r_emu = np.zeros(m, np.float32)
        r_cpu = r_emu.copy()
        assert same(emu.select_topk(x, k, residual=r_emu, one_block_max=0), select_topk_ef(r_cpu, x, k))
        assert ref.same_bits(r_emu, r_cpu)


def test_select_small_inputs_against_reference():
    for x, k in small_inputs():
        assert same(emu.select_topk(x, k), ref.select(x, k)), (x.dtype, x.size, k)


def test_select_int64_indices():
    x = make("ties", LARGE, 1100)
    idx, val = emu.select_topk(x, 1100, idx64=True)
    want = select_topk(x, 1100)
    assert idx.dtype == np.int64 and np.array_equal(idx, want[0]) and ref.same_bits(val, want[1])


def test_select_same_result_under_other_thread_orders():
    """The emulator's seed reorders the threads between barriers: results must not change."""
    x = make("ties", LARGE, 1100)
    first = emu.select_topk(x, 1100, seed=1)
    for seed in (2, 3):
        assert same(emu.select_topk(x, 1100, seed=seed), first)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("m,k", FUSED_CASES)
def test_fused_error_feedback_matches_cpu(dtype, m, k):
    x, r = fused_inputs(dtype, m)
    r_emu, r_cpu = r.copy(), r.copy()
    got = emu.select_topk(x, k, residual=r_emu)
    want = select_topk_ef(r_cpu, x, k)
    assert same(got, want)
    assert ref.same_bits(r_emu, r_cpu)  # every entry holds residual + x


def test_select_rejects_bad_input():
    x = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="k must be >= 1"):
        emu.select_topk(x, 0)
    with pytest.raises(ValueError, match="residual"):
        emu.select_topk(x, 1, residual=np.ones(9, np.float32))
    with pytest.raises(ValueError, match="dtype"):
        emu.select_topk(x.astype(np.float64), 1)


def test_merge_of_two_gradient_sized_sets_matches_cpu():
    rng = np.random.default_rng(12)
    k = 25_557
    a, b = sparse(rng, 1_000_000, k, np.float32), sparse(rng, 1_000_000, k, np.float32)
    b[1][::3] = np.round(b[1][::3])  # ties between sets and inside one
    assert same(emu.merge_topk(*a, *b, k), merge_topk(*a, *b, k))


def test_merge_bfloat16():
    rng = np.random.default_rng(13)
    a, b = sparse(rng, 3000, 500, np.float32), sparse(rng, 3000, 500, np.float32)
    a, b = (a[0], np.round(a[1] * 8)), (b[0], np.round(b[1] * 8))  # small integers: exact sums in bfloat16
    want = ref.merge(a, b, 300, np.float32)
    idx, val = emu.merge_topk(a[0], to_bf16(a[1]), b[0], to_bf16(b[1]), 300, bf16=True)
    assert np.array_equal(idx, want[0]) and np.array_equal(val, to_bf16(want[1]))


def test_merge_nan_sum_is_symmetric_and_canonical():
    a = (np.array([1, 2], np.int32), np.array([np.nan, np.inf], np.float32))
    b = (np.array([1, 2], np.int32), np.array([-np.nan, -np.inf], np.float32))
    ab, ba = emu.merge_topk(*a, *b, 2), emu.merge_topk(*b, *a, 2)
    assert same(ab, ba) and same(ab, merge_topk(*a, *b, 2))


def test_merge_rejects_unsorted():
    v = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="first indices must be strictly ascending"):
        emu.merge_topk(np.array([3, 1, 5], np.int32), v, np.array([1, 2, 3], np.int32), v, 2)
    with pytest.raises(ValueError, match="second indices must be strictly ascending"):
        emu.merge_topk(np.array([1, 2, 3], np.int32), v, np.array([1, 1, 3], np.int32), v, 2)


def test_scatter_and_zero_at():
    rng = np.random.default_rng(14)
    idx, val = sparse(rng, 10_000, 700, np.float32)
    dense = np.zeros(10_000, np.float32)
    emu.scatter(idx, val, dense)
    want = np.zeros(10_000, np.float32)
    want[idx] = val
    assert ref.same_bits(dense, want)
    emu.zero_at(idx[::2], dense)
    want[idx[::2]] = 0
    assert ref.same_bits(dense, want)


def test_emulator_reports_a_divergent_barrier_instead_of_hanging():
    with pytest.raises(RuntimeError, match="divergent barrier.*32 waiting at __syncthreads; 32 exited"):
        emu.divergent_barrier()


# ------------------------------------------------------------------ the collectives (gtopk_mpi/cuda.py)

@pytest.mark.parametrize("ranks", [2, 3])  # 3: a rank folds in and out
@pytest.mark.parametrize("kernels", ["emulator", "torch"])
def test_cuda_collectives_on_the_emulator(ranks, kernels):
    """gtopk_mpi/cuda.py's collectives on the stand-in device (CPU tensors; the CUDA kernels on
    the emulator, or torch's operations) equal the CPU collectives, with the k pairs staged
    through host memory and with device buffers handed to MPI; with torch's operations also
    the torch front end (hvd.allreduce, the optimizer, the DDP hook). 50,000 entries (k = 50):
    the launches of every m up to 2^18 (no sample below 16 x 65,536 keys, 13 filter tiles, one
    block finishes), as at the 200,000 used before, in a third of the time; the kernels' sampled path
    at LARGE is held by the selection and fused tests above (one process, bit for bit), so the
    collectives' plumbing need not pay the emulator for it again (on a GPU, scripts/gpu_check.sh
    runs this check at the default GTOPK_TEST_M, above LARGE)."""
    proc = run(ranks, ["tests/programs/cuda_collective_check.py"], timeout=300,
               env={"GTOPK_TEST_DEVICE_KERNELS": kernels, "GTOPK_TEST_M": "50000"})
    assert proc.returncode == 0 and "CUDA COLLECTIVE OK" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_emulated_kernels_stay_in_bounds_under_valgrind():
    proc = subprocess.run(["valgrind", "--max-stackframe=2000000", "-q", sys.executable,
                           "tests/programs/emu_memcheck.py"], cwd=ROOT, env={**os.environ, "PYTHONMALLOC": "malloc"},
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and "MEMCHECK RUN OK" in proc.stdout, proc.stdout + proc.stderr
    # valgrind's reports are blocks of "==pid==" lines; keep those that reach into our module
    blocks = re.split(r"==\d+== \n", proc.stderr)
    ours = [b for b in blocks if "_cuda_emu" in b and ("Invalid" in b or "uninitialised" in b)]
    assert not ours, "\n".join(ours)

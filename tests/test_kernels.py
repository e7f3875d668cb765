"""Native kernels (gtopk_mpi._C) against the NumPy reference, single process. The merge and
the fuzz tests also run the GPU path's code on the CPU's SIMT emulator (gtopk_mpi._cuda_emu;
more of it in tests/test_cuda_emulated.py) against the same reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gtopk_mpi import _C, merge_topk, select_topk, select_topk_ef
from gtopk_mpi import _cuda_emu as emu

import reference as ref

DTYPES = [np.float16, np.float32, np.float64]
GPU_DTYPES = [np.float16, np.float32]  # of these, the ones the GPU path has


def implementations(cpu, emulated_gpu) -> list:
    """(function, dtype) pairs: the CPU kernel on every dtype, the emulated GPU one on its own."""
    return ([pytest.param(cpu, d, id=f"cpu-{np.dtype(d).name}") for d in DTYPES]
            + [pytest.param(emulated_gpu, d, id=f"emulated_gpu-{np.dtype(d).name}") for d in GPU_DTYPES])


def capped(fn, form: str):
    """fn with the merge kernels capped at ``form`` ("avx2" or "scalar"; float32 / int32 merges
    and settle's record lookups take the widest form the CPU has): the forms CPUs without
    AVX-512 run, checked on the same machine."""
    def run(*args):
        was = _C.merge_form(form)
        try:
            return fn(*args)
        finally:
            _C.merge_form(was)
    return run


SELECTS = implementations(select_topk, emu.select_topk)
MERGES = implementations(merge_topk, emu.merge_topk) + [
    pytest.param(capped(merge_topk, f), np.float32, id=f"cpu_{f}-float32") for f in ("avx2", "scalar")]
MERGE_FORMS = [pytest.param(_C.merge_topk, id="as_built")] + [
    pytest.param(capped(_C.merge_topk, f), id=f) for f in ("avx2", "scalar")]


def check_select(x: np.ndarray, k: int, threads: int = 1, select=None) -> None:
    idx, val = select_topk(x, k, threads=threads) if select is None else select(x, k)
    r_idx, r_val = ref.select(x, k)
    assert idx.dtype == np.int32
    assert np.array_equal(idx, r_idx), (idx, r_idx)
    assert ref.same_bits(val, r_val)


def fast_reference(x: np.ndarray, k: int) -> np.ndarray:
    """Top-k indices of a large, NaN-free x by lexsort (|x| descending, index ascending)."""
    order = np.lexsort((np.arange(len(x)), -np.abs(x.astype(np.float64))))
    return np.sort(order[:k])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", [(1, 1), (7, 3), (100, 1), (100, 99), (100, 100), (100, 1000), (5000, 50)])
def test_select_random(dtype, m, k):
    rng = np.random.default_rng(m * 31 + k)
    check_select(rng.standard_normal(m).astype(dtype), k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_select_special_values(dtype):
    x = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 2.0, -np.nan, 1.0, 0.0], dtype=dtype)
    for k in range(1, len(x) + 2):
        check_select(x, k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_select_ties_go_to_lower_index(dtype):
    x = np.array([3, -3, 1, 3, 2, -3, 3], dtype=dtype)
    idx, _ = select_topk(x, 3)
    assert idx.tolist() == [0, 1, 3]


@pytest.mark.parametrize("case", ["normal", "all_zero", "ascending", "sample_overestimates",
                                  "sample_underestimates", "few_nonzero", "constant"])
@pytest.mark.parametrize("threads", [1, 2])
def test_select_large_paths(case, threads):
    """Inputs long enough for the sampled threshold, including ones that defeat it."""
    m, k = 1_200_000, 1_200
    rng = np.random.default_rng(7)
    if case == "normal":
        x = rng.standard_normal(m).astype(np.float32)
    elif case == "all_zero":
        x = np.zeros(m, np.float32)
    elif case == "ascending":
        x = np.linspace(-1, 1, m, dtype=np.float32)
    elif case == "sample_overestimates":  # large values only where the sample looks: < k above t
        x = rng.standard_normal(m).astype(np.float32) * 1e-3
        x[_C.sample_plan(m, k)["block_starts"]] = 100.0
    elif case == "sample_underestimates":  # large values everywhere but the sample: cap overflows
        plan = _C.sample_plan(m, k)
        x = np.ones(m, np.float32)
        for s in plan["block_starts"]:
            x[s : s + plan["block_len"]] = rng.standard_normal(plan["block_len"]).astype(np.float32) * 1e-3
    elif case == "few_nonzero":  # fewer nonzeros than k: zeros fill up from the lowest index
        x = np.zeros(m, np.float32)
        x[rng.choice(m, k // 2, replace=False)] = 1 + rng.random(k // 2, dtype=np.float32)
    else:
        x = np.full(m, 0.5, np.float32)
    idx, val = select_topk(x, k, threads=threads)
    want = fast_reference(x, k)
    assert np.array_equal(idx, want)
    assert ref.same_bits(val, x[want])


def test_select_nan_in_large_input():
    m, k = 1_100_000, 500
    x = np.random.default_rng(1).standard_normal(m).astype(np.float32)
    nan_at = [5, 700_000, 1_099_999]
    x[nan_at] = np.nan
    idx, _ = select_topk(x, k)
    assert set(nan_at) <= set(idx.tolist())
    assert len(idx) == k


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", [(50, 5), (2_000_000, 2_000)])
def test_select_ef_fuses_residual_update(dtype, m, k):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(m).astype(dtype)
    r = rng.standard_normal(m).astype(dtype)
    acc = r + x
    idx, val = select_topk_ef(r, x, k)
    assert ref.same_bits(r, acc)
    want = fast_reference(acc, k)
    assert np.array_equal(idx, want)
    assert ref.same_bits(val, acc[want])


def test_select_int64_indices_not_needed_below_2_31():
    idx, _ = select_topk(np.ones(10, np.float32), 2)
    assert idx.dtype == np.int32


@pytest.mark.parametrize("bad,match", [
    (np.ones((2, 2), np.float32), "1-D"),
    (np.ones(10, np.float32)[::2], "contiguous"),
    (np.ones(10, np.int32), "dtype"),
])
def test_select_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        select_topk(bad, 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        select_topk(np.ones(3, np.float32), 0)


def sparse(rng, m, n, dtype):
    idx = np.sort(rng.choice(m, n, replace=False)).astype(np.int32)
    return idx, rng.standard_normal(n).astype(dtype)


@pytest.mark.parametrize("merge,dtype", MERGES)
@pytest.mark.parametrize("overlap", ["random", "none", "full", "one_empty"])
def test_merge_against_reference_and_symmetric(merge, dtype, overlap):
    rng = np.random.default_rng(11)
    a = sparse(rng, 4000, 600, dtype)  # 1200 entries: more than one per GPU thread
    if overlap == "random":
        b = sparse(rng, 4000, 600, dtype)
    elif overlap == "none":
        b = (a[0] + 4000, rng.standard_normal(600).astype(dtype))
    elif overlap == "full":
        b = (a[0].copy(), rng.standard_normal(600).astype(dtype))
    else:
        b = (np.zeros(0, np.int32), np.zeros(0, dtype))
    for k in (1, 10, 600, 1199, 5000):
        got = merge(*a, *b, k)
        want = ref.merge(a, b, k, dtype)
        assert np.array_equal(got[0], want[0]) and ref.same_bits(got[1], want[1])
        swapped = merge(*b, *a, k)
        assert np.array_equal(got[0], swapped[0]) and ref.same_bits(got[1], swapped[1])


@pytest.mark.parametrize("merge", MERGE_FORMS)
@pytest.mark.parametrize("case", ["normal", "ties", "overlap", "constant", "spikes", "cancel"])
@pytest.mark.parametrize("k", [1, 700, 12_000, 19_999])
def test_large_merges_take_the_sampled_threshold_and_stay_exact(merge, case, k):
    """Unions of 8,192 entries and more find the k-th key from a sample bracket (falling back
    to every key when the sample misleads): against the reference, and symmetric."""
    rng = np.random.default_rng(hash(case) % 2**32)
    a, b = sparse(rng, 200_000, 10_000, np.float32), sparse(rng, 200_000, 10_000, np.float32)
    if case == "ties":
        a, b = (a[0], np.round(a[1] * 2) / 2), (b[0], np.round(b[1] * 2) / 2)
    elif case == "overlap":  # half the indices shared
        b = (np.unique(np.concatenate([a[0][::2], b[0][: 5_000]])), None)
        b = (b[0], rng.standard_normal(len(b[0])).astype(np.float32))
    elif case == "constant":
        a, b = (a[0], np.full(10_000, 0.5, np.float32)), (b[0], np.full(10_000, -0.5, np.float32))
    elif case == "spikes":  # a few huge values, where a stride sample rarely looks
        a[1][::997] = 1e6
    elif case == "cancel":  # shared indices whose values cancel to exactly 0
        b = (a[0].copy(), -a[1])
    got = merge(*a, *b, k)
    want = ref.merge(a, b, k, np.float32)
    assert np.array_equal(got[0], want[0]) and ref.same_bits(got[1], want[1])
    back = merge(*b, *a, k)
    assert np.array_equal(back[0], got[0]) and ref.same_bits(back[1], got[1])
    ta = np.arange(1, len(a[0]) + 1, dtype=np.uint32) << 1
    tb = np.full(len(b[0]), 1, np.uint32)
    tagged = merge(*a, *b, k, ta, tb)
    assert np.array_equal(tagged[0], got[0]) and ref.same_bits(tagged[1], got[1])
    assert np.array_equal(tagged[2], ref.merged_tags(a[0], ta, b[0], tb, got[0]))
    one_sided = merge(*a, *b, k, ta, None)
    assert np.array_equal(one_sided[2], ref.merged_tags(a[0], ta, b[0], np.zeros_like(tb), got[0]))


@pytest.mark.parametrize("merge", MERGE_FORMS)
def test_merge_stays_exact_when_the_sample_misleads(merge):
    """Tiny values exactly at the union slots the AVX-512 form samples (slot j * n // 1024 of
    the union laid out with a hole after each shared index), large ones elsewhere: its bracket
    misses and it ranks every key."""
    rng = np.random.default_rng(8)
    a, b = sparse(rng, 60_000, 10_000, np.float32), sparse(rng, 60_000, 10_000, np.float32)
    union = np.union1d(a[0], b[0])
    shared = np.isin(union, a[0]) & np.isin(union, b[0])
    first_slot = np.concatenate([[0], np.cumsum(1 + shared)[:-1]])
    sampled = union[np.isin(first_slot, np.arange(1024) * 20_000 // 1024)]
    for idx, val in (a, b):
        val[:] = np.abs(val) + 10
        val[np.isin(idx, sampled)] = 1e-3
    for k in (700, 12_000):
        got = merge(*a, *b, k)
        want = ref.merge(a, b, k, np.float32)
        assert np.array_equal(got[0], want[0]) and ref.same_bits(got[1], want[1])


SETTLE_FORMS = [pytest.param(_C.settle, id="as_built")] + [
    pytest.param(capped(_C.settle, f), id=f) for f in ("avx2", "scalar")]


@pytest.mark.parametrize("settle", SETTLE_FORMS)
@pytest.mark.parametrize("m,n", [(50, 7), (100_000, 25_000)])
def test_settle_against_reference(settle, m, n):
    """Error feedback after an exchange: own entries cleared, then two records' rounding
    errors added in order where their bits are set; a marked index missing from a record is
    an error (either form: the AVX-512 lookup where the CPU has it, and the scalar walk)."""
    rng = np.random.default_rng(m)
    own_bit, bits = 1, (16, 32)
    idx = np.sort(rng.choice(m, n, replace=False)).astype(np.int32)
    tags = (rng.integers(0, 2, n) * own_bit).astype(np.uint32)
    records = []
    for bit in bits:
        marked = rng.random(n) < 0.5
        tags[marked] |= bit
        extra = rng.choice(np.setdiff1d(np.arange(m), idx[marked]), n // 3, replace=False)
        rec_idx = np.union1d(idx[marked], extra).astype(np.int32)
        records.append((bit, rec_idx, rng.standard_normal(len(rec_idx)).astype(np.float32)))
    residual = rng.standard_normal(m).astype(np.float32)
    want = residual.copy()
    want_carried = ref.settle(want, idx, tags, own_bit, records)
    got = residual.copy()
    carried = settle(got, idx, tags, own_bit, records)
    assert np.array_equal(carried, want_carried) and ref.same_bits(got, want)
    bit, rec_idx, err = records[1]
    gap = rec_idx != idx[(tags & bit) != 0][n // 4]  # one marked index dropped from the record
    with pytest.raises(ValueError, match="no error record"):
        settle(residual.copy(), idx, tags, own_bit, [records[0], (bit, rec_idx[gap], err[gap])])


def test_merge_forms_agree_at_the_edges_of_the_index_range():
    """Indices up to 2^31 - 2 (the AVX-512 form's key is index << 1 | side) and 2^31 - 1 (the
    scalar form takes those): both forms, against the reference."""
    top = 2**31 - 1
    rng = np.random.default_rng(5)
    for high in (top - 1, top):
        a = (np.array([0, 5, top - 3, high], np.int32), rng.standard_normal(4).astype(np.float32))
        b = (np.array([5, top - 2, high], np.int32), rng.standard_normal(3).astype(np.float32))
        for merge in (_C.merge_topk, capped(_C.merge_topk, "avx2"), capped(_C.merge_topk, "scalar")):
            for k in (1, 3, 6):
                got, want = merge(*a, *b, k), ref.merge(a, b, k, np.float32)
                assert np.array_equal(got[0], want[0]) and ref.same_bits(got[1], want[1])


def test_merge_rejects_unsorted_and_mixed():
    i = np.array([3, 1], np.int32)
    v = np.ones(2, np.float32)
    with pytest.raises(ValueError, match="ascending"):
        merge_topk(i, v, i[:1], v[:1], 2)
    with pytest.raises(ValueError, match="int32 or both int64"):
        merge_topk(np.array([1], np.int32), v[:1], np.array([1], np.int64), v[:1], 1)
    with pytest.raises(ValueError, match="dtype"):
        merge_topk(np.array([1], np.int32), v[:1], np.array([1], np.int32), np.ones(1, np.float64), 1)


def test_merge_nan_sum_is_symmetric():
    a = (np.array([1], np.int32), np.array([np.nan], np.float32))
    b = (np.array([1], np.int32), -np.array([np.nan], np.float32))  # other sign / payload
    ab, ba = merge_topk(*a, *b, 1), merge_topk(*b, *a, 1)
    assert ref.same_bits(ab[1], ba[1]) and np.isnan(ab[1][0])


def test_sample_plan_shared_pieces():
    """The host-side pieces the CUDA selection shares: sample layout and rank bounds."""
    m, k = 25_557_032, 25_557
    plan = _C.sample_plan(m, k)
    starts = plan["block_starts"]
    assert plan["use_sample"] and starts[0] == 0 and starts[-1] == m - plan["block_len"]
    assert all(a + plan["block_len"] <= b for a, b in zip(starts, starts[1:]))
    mu = len(starts) * plan["block_len"] * k / m
    assert 2 * mu < plan["rank"] < 2 * mu + 4 * mu**0.5 + 17
    assert plan["cap"] >= k + 2 * m * plan["rank"] / (len(starts) * plan["block_len"]) - 1
    assert not _C.sample_plan(1000, 10)["use_sample"]          # short: ranked directly
    assert not _C.sample_plan(m, m // 4)["use_sample"]         # dense: histogram path


# ---------------------------------------------------------------------------------------- fuzz

SPECIAL = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, np.inf, -np.inf, np.nan])


def values(dtype, n):
    elems = st.one_of(SPECIAL, st.floats(-1e3, 1e3, width=np.dtype(dtype).itemsize * 8))
    return hnp.arrays(dtype, n, elements=elems)


@pytest.mark.parametrize("select,dtype", SELECTS)
@settings(max_examples=60, deadline=None)
@given(data=st.data(), m=st.integers(1, 300), k=st.integers(1, 320))
def test_fuzz_select(select, dtype, data, m, k):
    check_select(data.draw(values(dtype, m)), k, select=select)


@pytest.mark.parametrize("merge,dtype", MERGES)
@settings(max_examples=60, deadline=None)
@given(data=st.data(), k=st.integers(1, 40))
def test_fuzz_merge(merge, dtype, data, k):
    def one():
        idx = np.array(sorted(data.draw(st.sets(st.integers(0, 60), max_size=40))), np.int32)
        return idx, data.draw(values(dtype, len(idx)))

    a, b = one(), one()
    got = merge(*a, *b, k)
    want = ref.merge(a, b, k, dtype)
    assert np.array_equal(got[0], want[0]) and ref.same_bits(got[1], want[1])
    swapped = merge(*b, *a, k)
    assert np.array_equal(got[0], swapped[0]) and ref.same_bits(got[1], swapped[1])

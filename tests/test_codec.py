"""The wire codecs (csrc/codec.h through gtopk_mpi._C) and the tagged merge against the NumPy
reference, bit for bit, with hypothesis fuzzing of the index coder's edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gtopk_mpi import _C

import reference as ref

RAW, BF16, FP16 = (int(_C.ValueCode.__members__[n]) for n in ("raw", "bf16", "fp16"))


def roundtrip(idx: np.ndarray, val: np.ndarray, code: int, limit: int, pack: int = -1):
    payload, index_bytes, scale, packed, back, err = _C.encode_entries(idx, val, code, pack, True)
    got_idx, got_val = _C.decode_entries(payload, len(idx), packed, index_bytes, idx.dtype == np.int64, code, scale,
                                         val.dtype, limit)
    return payload, index_bytes, packed, got_idx, got_val, back, err


@st.composite
def index_sets(draw):
    """Sorted distinct indices below m: empty, one entry, gaps of 0, 1 and up to 2^31 - 1,
    int32 (m < 2^31) or int64 (m up to 2^40)."""
    wide = draw(st.booleans())
    m = draw(st.integers(1, 2**40 if wide else 2**31 - 1))
    gaps = draw(st.lists(st.one_of(st.just(0), st.just(1), st.integers(0, 2**31 - 1), st.integers(0, 300)),
                         max_size=200))
    idx, cur = [], -1
    for gap in gaps:
        if cur + 1 + gap >= m:
            break
        cur += 1 + gap
        idx.append(cur)
    return np.array(idx, dtype=np.int64 if wide else np.int32), m


@settings(max_examples=300, deadline=None)
@given(index_sets())
def test_packed_indices_match_the_reference_and_round_trip(case):
    idx, m = case
    val = np.arange(len(idx), dtype=np.float32)
    payload, index_bytes, packed, got_idx, got_val, _, _ = roundtrip(idx, val, RAW, m, pack=1)
    assert packed and bytes(payload[:index_bytes]) == ref.pack_gaps(idx)
    assert ref.unpack_gaps(ref.pack_gaps(idx), len(idx)) == [int(i) for i in idx]
    assert got_idx.dtype == idx.dtype and np.array_equal(got_idx, idx) and np.array_equal(got_val, val)
    auto = _C.encode_entries(idx, val, RAW, -1, False)
    assert auto[1] == ref.index_bytes(idx, idx.itemsize) and auto[3] == (auto[1] < idx.nbytes)


def special_values(rng: np.random.Generator, n: int) -> np.ndarray:
    v = (rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)).astype(np.float32)
    v[::17] = 0.0
    v[1::17] = -0.0
    v[2::23] = np.inf
    v[3::23] = -np.inf
    v[4::29] = np.nan
    v[5::31] = np.float32(3.4e38)  # rounds to inf in bfloat16
    v[6::37] = np.float32(1e-40)   # subnormal
    return v


@pytest.mark.parametrize("code", [BF16, FP16])
def test_sixteen_bit_values_match_the_reference(code):
    rng = np.random.default_rng(code)
    for scale_case in range(3):
        v = special_values(rng, 2000) if scale_case == 0 else (rng.standard_normal(2000) * 1e-7).astype(np.float32)
        if scale_case == 2:
            v[:] = 0.0
        idx = np.arange(len(v), dtype=np.int32) * 3
        _, _, _, got_idx, got_val, back, err = roundtrip(idx, v, code, 10**7)
        want = ref.round_bf16(v) if code == BF16 else ref.round_fp16(v)
        assert ref.same_bits(got_val, want) and ref.same_bits(back, want)
        assert np.array_equal(got_idx, idx)
        want_err = np.array([ref.rounding_error(a, b) for a, b in zip(v, want)], np.float32)
        assert ref.same_bits(err, want_err)
        finite = np.isfinite(v) & np.isfinite(want)
        assert np.array_equal(want[finite] + err[finite], v[finite])  # the error is exact


def test_fp16_scaling_keeps_small_gradients():
    v = (np.random.default_rng(1).standard_normal(1000) * 1e-6).astype(np.float32)
    _, _, _, _, got, _, _ = roundtrip(np.arange(1000, dtype=np.int32), v, FP16, 1000)
    assert np.all(got != 0) and np.max(np.abs(got - v) / np.abs(v)) <= 2.0**-11


def test_malformed_messages_raise_valueerror():
    idx = np.array([3, 10, 4000], np.int32)
    val = np.ones(3, np.float32)
    payload, index_bytes, _, packed, _, _ = _C.encode_entries(idx, val, RAW, 1, False)
    with pytest.raises(ValueError, match="size does not match"):
        _C.decode_entries(payload[:-1], 3, packed, index_bytes, False, RAW, 0, np.dtype(np.float32), 10**6)
    with pytest.raises(ValueError, match="out of range"):
        _C.decode_entries(payload, 3, packed, index_bytes, False, RAW, 0, np.dtype(np.float32), 4000)
    broken = payload.copy()
    broken[0] = 99  # block width > 64
    with pytest.raises(ValueError, match="bad block width"):
        _C.decode_entries(broken, 3, packed, index_bytes, False, RAW, 0, np.dtype(np.float32), 10**6)
    with pytest.raises(ValueError, match="strictly ascending"):
        _C.encode_entries(idx[::-1].copy(), val, RAW, 1, False)
    with pytest.raises(ValueError, match="float32"):
        _C.encode_entries(idx, val.astype(np.float64), BF16, 1, False)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 80))
def test_tagged_merge_carries_tags_with_their_entries(seed, k):
    """Tags OR-ed at equal indices and kept only with the entries the top-k keeps: the
    bookkeeping of own contributions and rounding errors (reference.merge_tracked)."""
    rng = np.random.default_rng(seed)
    a_idx = np.sort(rng.choice(200, rng.integers(0, 60), replace=False)).astype(np.int32)
    b_idx = np.sort(rng.choice(200, rng.integers(0, 60), replace=False)).astype(np.int32)
    a_val = np.round(rng.standard_normal(len(a_idx)) * 4).astype(np.float32)
    b_val = np.round(rng.standard_normal(len(b_idx)) * 4).astype(np.float32)
    a_tag = rng.integers(0, 8, len(a_idx)).astype(np.uint32)
    b_tag = (rng.integers(0, 8, len(b_idx)) << 3).astype(np.uint32)
    idx, val, tag = _C.merge_topk(a_idx, a_val, b_idx, b_val, k, a_tag, b_tag)
    w_idx, w_val, w_pend = ref.merge_tracked((a_idx, a_val, [{"t": int(t)} for t in a_tag]),
                                             (b_idx, b_val, [{"u": int(t)} for t in b_tag]), k, np.float32)
    assert np.array_equal(idx, w_idx) and ref.same_bits(val, w_val)
    assert [int(t) for t in tag] == [p.get("t", 0) | p.get("u", 0) for p in w_pend]
    plain = _C.merge_topk(a_idx, a_val, b_idx, b_val, k)
    assert len(plain) == 2 and np.array_equal(plain[0], idx) and ref.same_bits(plain[1], val)

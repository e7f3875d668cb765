"""Multi-rank checks of the collectives, run as ``mpiexec -n P python tests/suites/mpi_suite.py``.

Every rank regenerates every rank's input from fixed seeds, runs the collective on
its own input, and compares with the sequential NumPy model in reference.py. All
checks for one P run in one launch; rank 0 prints one line per check and a final
``SUITE: N passed, M failed``; the exit status is 1 on any failure.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))  # reference, mpi_harness
import gtopk_mpi as g  # noqa: E402
from gtopk_mpi import wire  # noqa: E402

import reference as ref  # noqa: E402
from mpi_harness import Suite, start_library  # noqa: E402

COMM = start_library()
RANK, P = g.rank(), g.size()
SUITE = Suite(COMM)
check = SUITE.check


def inputs(seed: int, m: int, dtype=np.float32, integer: bool = False) -> list[np.ndarray]:
    """Every rank's input for this seed (all ranks compute all of them)."""
    out = []
    for q in range(P):
        rng = np.random.default_rng([seed, q])
        x = rng.integers(-50, 51, m) if integer else rng.standard_normal(m)
        out.append(x.astype(dtype))
    return out


def identical_on_all_ranks(*arrays: np.ndarray) -> None:
    SUITE.identical_on_all_ranks(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays))


def assert_result(res, want_idx, want_val) -> None:
    identical_on_all_ranks(res.indices, res.values)  # collective first: a local failure must not strand peers
    assert np.array_equal(res.indices, want_idx), f"indices differ: {res.indices[:8]} vs {want_idx[:8]}"
    assert ref.same_bits(res.values, want_val), f"values differ: {res.values[:8]} vs {want_val[:8]}"


# ----------------------------------------------------------------------------- correctness


@check
def gtopk_matches_reference_all_dtypes():
    for dtype in (np.float32, np.float16, np.float64):
        for m, k in ((3000, 40), (50, 7), (5, 1)):
            xs = inputs(1, m, dtype)
            res = g.gtopk_allreduce(xs[RANK], k=k)
            w_idx, w_val, _ = ref.gtopk(xs, k)
            assert res.nnz <= k and res.size == m
            assert_result(res, w_idx, w_val)


@check
def gtopk_density_and_average():
    xs = inputs(2, 4000)
    res = g.gtopk_allreduce(xs[RANK], density=0.0025, average=True)
    w_idx, w_val, _ = ref.gtopk(xs, math.ceil(0.0025 * 4000), average=True)
    assert_result(res, w_idx, w_val)


@check
def density_one_is_the_dense_sum():
    xs = inputs(3, 700, integer=True)  # integer-valued: every summation order is exact
    want = np.sum(xs, axis=0, dtype=np.float32)
    for values in ("merged", "exact"):
        res = g.gtopk_allreduce(xs[RANK], density=1.0, values=values)
        assert res.nnz == 700 and np.array_equal(res.to_dense(), want)
    dense = g.dense_allreduce(xs[RANK])
    assert np.array_equal(dense, want)
    identical_on_all_ranks(dense)
    xs = inputs(4, 500)  # random floats: equal to the dense allreduce up to rounding
    res = g.gtopk_allreduce(xs[RANK], k=10**6)
    np.testing.assert_allclose(res.to_dense(), g.dense_allreduce(xs[RANK]), rtol=1e-5, atol=1e-5)


@check
def identical_inputs_give_p_times_topk():
    x = inputs(5, 2000, integer=True)[0]
    res = g.gtopk_allreduce(x, k=25)
    idx, val = ref.select(x, 25)
    assert np.array_equal(res.indices, idx) and np.array_equal(res.values, val * np.float32(P))


@check
def disjoint_supports_give_exact_topk_of_sum():
    m, k = 5000, 30
    xs = []
    for q in range(P):
        x = np.zeros(m, np.float32)
        rng = np.random.default_rng([6, q])
        x[q::P][rng.choice(len(x[q::P]), k, replace=False)] = rng.standard_normal(k).astype(np.float32)
        xs.append(x)
    res = g.gtopk_allreduce(xs[RANK], k=k)
    dense = np.sum(xs, axis=0)
    w_idx, w_val = ref.select(dense, k)
    want = np.zeros(m, np.float32)
    want[w_idx] = w_val
    assert np.array_equal(res.to_dense(), want)


@check
def exact_values_equal_reference_on_integers():
    for average in (False, True):
        xs = inputs(7, 3000, integer=True)
        res = g.gtopk_allreduce(xs[RANK], k=50, values="exact", average=average)
        w_idx, w_val, _ = ref.gtopk(xs, 50, values="exact", average=average)
        assert_result(res, w_idx, w_val)


@check
def conservation_over_50_steps():
    """sum_q residual_after + result == sum_q (residual_before + x), every step, both modes;
    residuals also bit-identical to the reference model's."""
    m, k = 1500, 12
    for values in ("merged", "exact"):
        residuals = [np.zeros(m, np.float64) for _ in range(P)]
        for step in range(50):
            xs = inputs(100 + step, m, np.float64)
            if values == "exact":  # integer-valued so MPI's summation order is exact too
                xs = [np.round(x * 8) for x in xs]
            before = sum(r + x for r, x in zip(residuals, xs))
            mine = residuals[RANK].copy()
            res = g.gtopk_allreduce(xs[RANK], k=k, residual=mine, values=values)
            w_idx, w_val, after = ref.gtopk(xs, k, residuals=residuals, values=values)
            assert_result(res, w_idx, w_val)
            assert ref.same_bits(mine, after[RANK]), f"step {step}: residual differs from the model"
            residuals = after
            total_after = sum(residuals) + res.to_dense()
            np.testing.assert_allclose(total_after, before, rtol=1e-12, atol=1e-12)


@check
def conservation_float32_in_place():
    m, k = 2000, 20
    r = np.zeros(m, np.float32)
    for step in range(10):
        x = inputs(200 + step, m)[RANK]
        before = np.float64(COMM.allreduce(float(np.sum(r.astype(np.float64) + x))))
        res = g.gtopk_allreduce(x, k=k, residual=r)
        after = COMM.allreduce(float(np.sum(r.astype(np.float64)))) + float(np.sum(res.values.astype(np.float64)))
        assert abs(after - before) < 1e-3 * (1 + abs(before)), (after, before)


@check
def topk_allgather_matches_reference():
    for average in (False, True):
        xs = inputs(8, 2500, integer=True)
        res = g.topk_allreduce(xs[RANK], k=30, average=average)
        w_idx, w_val, _ = ref.topk_allgather(xs, 30, average=average)
        assert_result(res, w_idx, w_val)
        assert res.nnz <= 30 * P
    xs = inputs(9, 1000)
    r = np.zeros(1000, np.float32)
    res = g.topk_allreduce(xs[RANK], density=0.01, residual=r)
    sent_idx, _ = ref.select(xs[RANK], 10)
    assert np.all(r[sent_idx] == 0) and np.count_nonzero(r) == 1000 - 10


@check
def gtopk_tree_matches_reference():
    xs = inputs(17, 2000)
    res = g.gtopk_tree_allreduce(xs[RANK], k=25)
    assert_result(res, *ref.gtopk_tree(xs, 25))
    if P > 1:
        short = xs[RANK][: 1999 if RANK == P - 1 else 2000]
        expect_error(g.MismatchError, "length", lambda: g.gtopk_tree_allreduce(short, k=5))
    recover()


@check
def dense_allreduce_dtypes_and_average():
    for dtype in (np.float16, np.float32, np.float64, np.int32, np.int64):
        xs = inputs(10, 300, dtype, integer=True)
        out = g.dense_allreduce(xs[RANK])
        assert out.dtype == dtype and np.array_equal(out, np.sum(xs, axis=0).astype(dtype))
        identical_on_all_ranks(out)
    xs = inputs(11, 300, np.float64)
    np.testing.assert_allclose(g.dense_allreduce(xs[RANK], average=True), np.mean(xs, axis=0), rtol=1e-12)


@check
def byte_count_of_each_message():
    """Each message: the header, the indices (packed gaps when smaller, as the reference
    packs them), the values (2 bytes with a 16-bit wire, the dtype's size otherwise; the
    fold-back message lossless, with its flags)."""
    m, k = 10_000, 100
    xs = inputs(12, m)
    for dtype, wire_name in ((np.float32, "fp32"), (np.float32, "bf16"), (np.float16, "fp32"), (np.float32, "raw")):
        x = xs[RANK].astype(dtype)
        res = g.gtopk_allreduce(x, k=k, wire=wire_name, hierarchical=False)
        trace = {}
        ref.gtopk([y.astype(dtype) for y in xs], k, wire=wire_name, trace=trace)
        want = sum(ref.message_bytes(*msg, dtype, wire_name, wire.HEADER.itemsize) for msg in trace[RANK])
        assert res.stats.bytes_sent == want, (dtype, wire_name, res.stats.bytes_sent, want)
        assert res.stats.messages_sent == len(trace[RANK])
        if P == 1 << (P.bit_length() - 1) and P > 1 and wire_name == "bf16":  # the yardstick: <= 4 B/entry
            assert res.stats.bytes_sent / (math.log2(P) * k) <= 4.0 + wire.HEADER.itemsize / k


@check
def sixteen_bit_wire_matches_reference_and_conserves():
    """wire="bf16" / "fp16": both partners merge what arrives (bit-identical results on every
    rank, equal to the reference's), each rank's residual keeps exactly the rounding errors
    it owns, so residuals + result still sum to everything fed in (integer data: exactly)."""
    m, k = 1200, 40
    for wire_name in ("bf16", "fp16"):
        for values in ("merged", "exact"):
            residuals = [np.zeros(m, np.float32) for _ in range(P)]
            for step in range(6):
                xs = [np.round(x * 300) for x in inputs(300 + step, m)]  # integers beyond 8 bits: bf16 rounds
                before = np.sum([r.astype(np.float64) + x for r, x in zip(residuals, xs)], axis=0)
                mine = residuals[RANK].copy()
                res = g.gtopk_allreduce(xs[RANK], k=k, residual=mine, values=values, wire=wire_name)
                w_idx, w_val, after = ref.gtopk(xs, k, residuals=residuals, values=values, wire=wire_name)
                assert_result(res, w_idx, w_val)
                assert ref.same_bits(mine, after[RANK]), f"{wire_name} {values} step {step}: residual differs"
                residuals = after
                total = np.sum([r.astype(np.float64) for r in residuals], axis=0) + res.to_dense()
                assert np.array_equal(total, before), f"{wire_name} {values} step {step}: mass not conserved"
        xs = inputs(310, m)
        res = g.topk_allreduce(xs[RANK], k=k, wire=wire_name, residual=(r := np.zeros(m, np.float32)))
        w_idx, w_val, errors = ref.topk_allgather(xs, k, wire=wire_name)
        assert_result(res, w_idx, w_val)
        want = xs[RANK].copy()  # unsent entries stay, sent ones leave their rounding error
        want[errors[RANK][0]] = errors[RANK][1]
        assert ref.same_bits(r, want)
    x = inputs(311, m)[RANK]
    expect_error(ValueError, "wire='bf16' sends float32 values in 16 bits; x is float64",
                 lambda: g.gtopk_allreduce(x.astype(np.float64) if RANK == 0 else x, k=5, wire="bf16"))
    if P > 1:
        expect_error(g.MismatchError, "ranks disagree on the wire",
                     lambda: g.gtopk_allreduce(x, k=5, wire="bf16" if RANK == P - 1 else "fp32"))
    recover()


# ----------------------------------------------------------------------------- errors


def expect_error(exc_type, fragment: str, fn, prefix: str = "") -> None:
    try:
        fn()
    except exc_type as e:
        text = str(e)
        assert fragment in text and text.startswith(prefix), f"{prefix!r}...{fragment!r} not in {text!r}"
        everyone = COMM.allgather(text)
        assert all(t == everyone[0] for t in everyone), f"ranks raised different messages: {everyone}"
        return
    raise AssertionError(f"no {exc_type.__name__} raised (expected {fragment!r})")


def recover() -> None:
    xs = inputs(13, 800)
    res = g.gtopk_allreduce(xs[RANK], k=9)
    w_idx, w_val, _ = ref.gtopk(xs, 9)
    assert_result(res, w_idx, w_val)


@check
def mismatches_raise_on_every_rank_then_recover():
    if P < 2:
        return
    odd = RANK == P - 1
    x = inputs(14, 1000)[RANK]
    cases = [
        ("length", lambda: g.gtopk_allreduce(x[: 999 if odd else 1000], k=5)),
        ("dtype", lambda: g.gtopk_allreduce(x.astype(np.float64) if odd else x, k=5)),
        ("k", lambda: g.gtopk_allreduce(x, k=6 if odd else 5)),
        ("average", lambda: g.gtopk_allreduce(x, k=5, average=odd)),
        ("values mode", lambda: g.gtopk_allreduce(x, k=5, values="exact" if odd else "merged")),
    ]
    for what, fn in cases:
        expect_error(g.MismatchError, f"ranks disagree on the {what}", fn)
        expect_error(g.MismatchError, f"ranks disagree on the {what}", fn)  # twice in a row
        recover()
    expect_error(g.MismatchError, "length", lambda: g.topk_allreduce(x[: 999 if odd else 1000], k=5))
    expect_error(g.MismatchError, "dtype", lambda: g.dense_allreduce(x.astype(np.float64) if odd else x))
    recover()


@check
def different_collectives_raise_on_every_rank_then_recover():
    """One rank calls another collective (or the same one with align=True): every rank
    raises the same MismatchError instead of waiting on a message that never comes."""
    if P < 2:
        return
    x = inputs(18, 1000)[RANK]
    calls = {"gtopk_allreduce": lambda: g.gtopk_allreduce(x, k=5),
             "topk_allreduce": lambda: g.topk_allreduce(x, k=5),
             "dense_allreduce": lambda: g.dense_allreduce(x),
             "gtopk_tree_allreduce": lambda: g.gtopk_tree_allreduce(x, k=5),
             "aligned gtopk_allreduce": lambda: g.gtopk_allreduce(x, k=5, align=True),
             "aligned topk_allreduce": lambda: g.topk_allreduce(x, k=5, align=True)}
    for mine in calls:
        for odd in calls:
            if mine == odd:
                continue
            fragment = "disagree on the align" if mine.split()[-1] == odd.split()[-1] else "disagree on the collective"
            expect_error(g.MismatchError, fragment, calls[odd] if RANK == P - 1 else calls[mine])
    recover()
    calls["aligned gtopk_allreduce"]()
    recover()


@check
def bad_local_input_raises_valueerror_everywhere():
    bad = RANK == P // 2
    x = inputs(15, 500)[RANK]
    cases = [
        ("k must be >= 1", lambda: g.gtopk_allreduce(x, k=0 if bad else 5)),
        ("pass exactly one of k or density", lambda: g.gtopk_allreduce(x, k=5, density=0.1 if bad else None)),
        ("density must be in (0, 1]", lambda: g.gtopk_allreduce(x, density=1.5 if bad else 0.1)),
        ("must be 1-D", lambda: g.gtopk_allreduce(x.reshape(20, 25) if bad else x, k=5)),
        ("contiguous", lambda: g.gtopk_allreduce(np.repeat(x, 2)[::2] if bad else x, k=5)),
        ("unsupported dtype", lambda: g.gtopk_allreduce(x.astype(np.int32) if bad else x, k=5)),
        ("residual must match x", lambda: g.gtopk_allreduce(
            x, k=5, residual=np.zeros(499 if bad else 500, np.float32))),
        ("values must be", lambda: g.gtopk_allreduce(x, k=5, values="bogus" if bad else "merged")),
    ]
    for fragment, fn in cases:
        expect_error(ValueError, fragment, fn, prefix=f"rank {P // 2}: ")
        recover()
    expect_error(ValueError, "unsupported dtype", lambda: g.topk_allreduce(x.astype(np.int64) if bad else x, k=3))
    expect_error(ValueError, "unsupported dtype", lambda: g.dense_allreduce(x.astype(bool) if bad else x))
    recover()


@check
def error_leaves_residual_holding_the_gradient():
    """A failed call sends nothing: the gradient stays in the residual (no mass lost)."""
    if P < 2:
        return
    x = inputs(16, 600)[RANK]
    r = np.zeros(600, np.float32)
    expect_error(g.MismatchError, "k", lambda: g.gtopk_allreduce(x, k=3 + (RANK == 0), residual=r))
    assert np.array_equal(r, x)


@check
def empty_vectors_work_everywhere():
    empty = np.zeros(0, np.float32)
    for values in ("merged", "exact"):
        res = g.gtopk_allreduce(empty, density=0.5, values=values, residual=np.zeros(0, np.float32))
        assert res.nnz == 0 and res.to_dense().shape == (0,)
    assert g.topk_allreduce(empty, k=3).nnz == 0
    assert g.gtopk_tree_allreduce(empty, k=3).nnz == 0
    assert g.dense_allreduce(empty).shape == (0,)


@check
def init_is_idempotent_and_sizes_are_sane():
    g.init()
    assert g.is_initialized() and g.size() == P and g.rank() == RANK
    assert 1 <= g.local_size() <= P and 0 <= g.local_rank() < g.local_size()


def main() -> int:
    status = SUITE.run()
    g.shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())

"""The training paths' density rule and schedule (gtopk_mpi.torch.density) against a
direct statement of the rule, and the knobs that set them."""

from __future__ import annotations

import logging
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gtopk_mpi.torch import density


def rule(m: int, rho: float, v: int, floor: int) -> int:
    """The documented rule, written out: ceil(rho m) (at least 1), at least ``floor`` entries;
    all m (dense) when those k entries of 4 + v bytes weigh at least the m values of v bytes."""
    k = max(1, math.ceil(rho * m))
    if floor == 0 or k >= m:
        return min(k, m)
    k = max(k, floor)
    return m if k * (4 + v) >= m * v else k


@given(m=st.integers(1, 50_000_000), rho=st.floats(1e-6, 1.0), v=st.sampled_from([2, 4, 8]),
       floor=st.sampled_from([0, 1, 100, 6055, 100_000]))
def test_training_k_follows_the_rule(m, rho, v, floor):
    assert density.training_k(m, rho, v, floor) == rule(m, rho, v, floor)


def test_training_k_at_the_documented_sizes():
    f = 6055
    assert density.training_k(21_840, 0.001, 4, f) == 6055       # Horovod's MNIST net: 22 -> 6,055
    assert density.training_k(25_557_032, 0.001, 4, f) == 25_558  # ResNet-50: untouched
    assert density.training_k(8_000, 0.001, 4, f) == 8_000        # 6,055 entries outweigh 8,000 values
    assert density.training_k(21_840, 0.001, 4, 0) == 22          # GTOPK_MIN_K=0


def test_min_k_knob(monkeypatch):
    monkeypatch.delenv("GTOPK_MIN_K", raising=False)
    assert density.min_k() == 6055 == math.floor(0.436e-3 / (8 * 9e-9))  # alpha / beta in 8-byte entries
    monkeypatch.setenv("GTOPK_MIN_K", "0")
    assert density.training_k(1000, 0.001) == 1
    monkeypatch.setenv("GTOPK_MIN_K", "-3")
    with pytest.raises(ValueError, match="GTOPK_MIN_K"):
        density.min_k()


def test_a_raised_k_is_logged_once_per_size(caplog):
    density._logged.discard(31_337)
    with caplog.at_level(logging.WARNING, logger="gtopk_mpi.torch.density"):
        for rho in (0.001, 0.01, 0.001):
            density.training_k(31_337, rho, 4, 6055)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "31,337" in lines[0] and "6,055" in lines[0] and "GTOPK_MIN_K=0" in lines[0]


def test_warm_up_defaults_and_overrides(monkeypatch):
    for name in ("GTOPK_DENSITY_WARMUP", "GTOPK_DENSITY_WARMUP_STEPS"):
        monkeypatch.delenv(name, raising=False)
    assert density.resolve_warmup(None, None) == ([0.25, 0.0625, 0.0156, 0.004], 100)
    assert density.resolve_warmup(None, 7) == ([0.25, 0.0625, 0.0156, 0.004], 7)
    assert density.resolve_warmup([], None) == ([], 1)
    assert density.resolve_warmup([0.5], None) == ([0.5], 1)
    monkeypatch.setenv("GTOPK_DENSITY_WARMUP", "none")
    assert density.resolve_warmup(None, None) == ([], 1)
    monkeypatch.setenv("GTOPK_DENSITY_WARMUP", "0.3,0.1")
    monkeypatch.setenv("GTOPK_DENSITY_WARMUP_STEPS", "5")
    assert density.resolve_warmup(None, None) == ([0.3, 0.1], 5)
    monkeypatch.setenv("GTOPK_DENSITY_WARMUP", "0.3,x")
    with pytest.raises(ValueError, match="GTOPK_DENSITY_WARMUP"):
        density.resolve_warmup(None, None)
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        density.resolve_warmup([1.5], None)
    with pytest.raises(ValueError, match=">= 1"):
        density.resolve_warmup([0.5], 0)


def test_schedule():
    seq = [density.scheduled(0.001, [0.25, 0.0625], 3, s) for s in range(8)]
    assert seq == [0.25] * 3 + [0.0625] * 3 + [0.001] * 2
    assert density.scheduled(0.001, [0.25], 3, -1) == 0.001  # before a hook's start_iter

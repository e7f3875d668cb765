"""How many entries a training step sends: the density schedule and the k rule shared by
DistributedOptimizer (through ErrorFeedback) and the DDP hook.

Schedule. The first steps use the warm-up densities, each for ``warmup_steps`` steps, then
the target density. Where the caller gives no warm-up (``None``) the library's default
applies: ``GTOPK_DENSITY_WARMUP`` (the paper's 0.25, 0.0625, 0.0156, 0.004) for
``GTOPK_DENSITY_WARMUP_STEPS`` (100) steps each; an empty list means none.

k rule (:func:`training_k`). k = ceil(density * m), raised to ``GTOPK_MIN_K`` (6,055) when
smaller: on the paper's 1 GbE fit (alpha = 0.436 ms, beta = 9 ns per byte) a message of
alpha / beta = 48 KB, 6,055 raw 8-byte entries, takes twice the latency alone (Hockney's
half-performance length), so a butterfly round of fewer entries saves almost no wire time
and only drops gradient: at density 0.001 a 21,840-parameter model would send 22 entries a
step. When the k entries would take at least as many bytes as the m dense values
(k (4 + v) >= m v for v-byte values: the same rounds, no smaller messages), the bucket is
reduced densely and exactly (k = m). Models large enough for the paper's regime (k >=
6,055, m >= 6.1M at density 0.001) are untouched. The first change for each bucket size is
logged (a warning, once per process). ``GTOPK_MIN_K=0`` keeps k = ceil(density * m) and never goes dense.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .. import config
from ..arguments import resolve_k

log = logging.getLogger(__name__)
_logged: set[int] = set()  # bucket sizes whose k this process has reported


def default_warmup() -> tuple[list[float], int]:
    """(densities, steps each) of the library's default warm-up (GTOPK_DENSITY_WARMUP[_STEPS])."""
    raw = config.DENSITY_WARMUP.get().strip().lower()
    if raw in ("", "none", "0"):
        return [], 1
    try:
        densities = [float(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"GTOPK_DENSITY_WARMUP={raw!r}: expected comma-separated densities or none") from None
    return densities, config.DENSITY_WARMUP_STEPS.get()


def resolve_warmup(density_warmup: Sequence[float] | None, warmup_steps: int | None) -> tuple[list[float], int]:
    """The warm-up to use: the caller's (``warmup_steps`` steps each, 1 if None), or with
    ``density_warmup=None`` the library's default (its own steps unless the caller gives some)."""
    if density_warmup is None:
        densities, steps = default_warmup()
        if warmup_steps is not None:
            steps = warmup_steps
    else:
        densities, steps = [float(d) for d in density_warmup], 1 if warmup_steps is None else warmup_steps
    for d in densities:
        if not 0.0 < d <= 1.0:
            raise ValueError(f"densities must be in (0, 1], got {d!r}")
    if int(steps) < 1:
        raise ValueError(f"density warm-up steps must be >= 1, got {steps!r}")
    return densities, int(steps)


def scheduled(density: float, warmup: Sequence[float], warmup_steps: int, step: int) -> float:
    """The density of 0-based ``step``: ``warmup[step // warmup_steps]``, then ``density``."""
    stage = step // warmup_steps if step >= 0 else len(warmup)
    return warmup[stage] if stage < len(warmup) else density


def min_k() -> int:
    """The training paths' floor on k: GTOPK_MIN_K (>= 0)."""
    floor = config.MIN_K.get()
    if floor < 0:
        raise ValueError(f"GTOPK_MIN_K={floor}: expected an integer >= 0")
    return floor


def training_k(m: int, density: float, value_bytes: int = 4, floor: int | None = None) -> int:
    """Entries a training step sends of m gradient elements at ``density`` (m: reduce densely),
    with at least ``floor`` entries (None: GTOPK_MIN_K); see the module docstring."""
    k = resolve_k(m, None, density)
    floor = min_k() if floor is None else floor
    if not floor or k >= m:
        return min(k, m)
    out = max(k, floor)
    if out * (4 + value_bytes) >= m * value_bytes:
        out = m
    if out != k and m not in _logged:
        _logged.add(m)
        if out == m:
            log.warning("gtopk_mpi: %s gradient elements at density %g give k = %s; reduced densely instead: "
                        "GTOPK_MIN_K = %s entries would weigh as much as the dense values (GTOPK_MIN_K=0 keeps "
                        "k = ceil(density * m))", f"{m:,}", density, f"{k:,}", f"{floor:,}")
        else:
            log.warning("gtopk_mpi: %s gradient elements at density %g give k = %s; sending %s (GTOPK_MIN_K), "
                        "as for every density below %.3g: fewer entries save almost no wire time on 1 GbE "
                        "(GTOPK_MIN_K=0 keeps k = ceil(density * m))", f"{m:,}", density, f"{k:,}", f"{out:,}",
                        floor / m)
    return out

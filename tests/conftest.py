import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))  # mpi_launch, reference, mpi_harness

from mpi_launch import SuiteRuns  # noqa: E402


@pytest.fixture(scope="session")
def suite_runs(request: pytest.FixtureRequest) -> SuiteRuns:
    """One mpiexec launch per multi-rank suite and P, shared by the tests of its checks."""
    return SuiteRuns(request.session)


# The suites check each algorithm at the k they ask for (k = ceil(density * m) of their small
# models), so they run without the training paths' defaults: no k floor, no default warm-up.
# tests/test_density.py and the suites' own checks of those defaults set them explicitly.
os.environ.setdefault("GTOPK_MIN_K", "0")
os.environ.setdefault("GTOPK_DENSITY_WARMUP", "none")

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mpi_launch import SuiteRuns  # noqa: E402


@pytest.fixture(scope="session")
def suite_runs(request: pytest.FixtureRequest) -> SuiteRuns:
    """One mpiexec launch per multi-rank suite and P, shared by the tests of its checks."""
    return SuiteRuns(request.session)

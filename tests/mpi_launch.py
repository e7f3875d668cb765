"""Launching test scripts under mpiexec with a timeout (a deadlock fails fast)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mpiexec() -> str:
    """$GTOPK_MPIEXEC, else the mpiexec beside this Python (the venv's MPICH), else PATH's."""
    if os.environ.get("GTOPK_MPIEXEC"):
        return os.environ["GTOPK_MPIEXEC"]
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if not found:
        raise RuntimeError("no mpiexec found: install the mpich wheel or set GTOPK_MPIEXEC")
    return found


def run(nprocs: int, args: list[str], timeout: float, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess:
    """Run ``python args...`` on nprocs ranks; fails the test with all output on timeout."""
    cmd = [mpiexec(), "-n", str(nprocs), sys.executable, *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    try:
        return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise AssertionError(f"{' '.join(cmd)} timed out after {timeout}s (deadlock?)\n{out}\n{err}") from None

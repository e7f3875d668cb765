"""Launching test scripts under mpiexec with a timeout (a deadlock fails fast)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gtopk_mpi import config

ROOT = Path(__file__).resolve().parents[2]


def mpiexec() -> str:
    """$GTOPK_MPIEXEC, else the mpiexec beside this Python (the venv's MPICH), else PATH's."""
    if config.MPIEXEC.get():
        return config.MPIEXEC.get()
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if not found:
        raise RuntimeError("no mpiexec found: install the mpich wheel or set GTOPK_MPIEXEC")
    return found


def run(nprocs: int, args: list[str], timeout: float, env: dict[str, str] | None = None, launcher: str = "mpiexec"
        ) -> subprocess.CompletedProcess:
    """Run ``python args...`` on nprocs ranks, under mpiexec or (``launcher="torchrun"``)
    ``torchrun --standalone`` (localhost rendezvous, no MPI launcher); fails the test with all
    output on timeout."""
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nprocs), *args]
    else:
        cmd = [mpiexec(), "-n", str(nprocs), sys.executable, *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    try:
        return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise AssertionError(f"{' '.join(cmd)} timed out after {timeout}s (deadlock?)\n{out}\n{err}") from None


def suite_checks(script: str) -> list[str]:
    """Names of the checks a suite script defines (functions decorated with ``@check``)."""
    tree = ast.parse((ROOT / script).read_text())
    return [node.name for node in tree.body if isinstance(node, ast.FunctionDef)
            and any(isinstance(d, ast.Name) and d.id == "check" for d in node.decorator_list)]


class SuiteRuns:
    """Each check of a suite script as a pytest test of its own, with one mpiexec launch per
    (script, P): the launch runs the checks of that script and P that this session selected
    (``pytest -k`` picks single checks) and every test reads its own check's outcome."""

    def __init__(self, session: pytest.Session):
        self.session = session
        self.runs: dict[tuple, tuple[dict, str]] = {}

    def _selected(self, request: pytest.FixtureRequest) -> list[str]:
        """The checks selected in this session of the calling test with its other parameters."""

        def others(item) -> dict:
            return {k: v for k, v in item.callspec.params.items() if k != "check"}

        mine = others(request.node)
        return sorted({item.callspec.params["check"] for item in self.session.items
                       if getattr(item, "function", None) is request.function and hasattr(item, "callspec")
                       and others(item) == mine})

    def outcome(self, request: pytest.FixtureRequest, script: str, nprocs: int, check: str, timeout: float,
                env: dict[str, str] | None = None, launcher: str = "mpiexec") -> None:
        """Fail the calling test unless ``check`` of ``script`` passed on ``nprocs`` ranks."""
        key = (script, nprocs, tuple(sorted((env or {}).items())), launcher)
        if key not in self.runs:
            wanted = self._selected(request) or [check]
            try:
                proc = run(nprocs, [script, "--only", ",".join(wanted)], timeout, env, launcher)
                output = proc.stdout + proc.stderr
            except AssertionError as e:  # timed out
                output = str(e)
            reports = {}
            for line in output.splitlines():
                if line.startswith("CHECK "):
                    rec = json.loads(line[len("CHECK "):])
                    reports[rec["name"]] = rec
            self.runs[key] = (reports, output)
        reports, output = self.runs[key]
        if check not in reports:
            pytest.fail(f"{script} on {nprocs} ranks ended before {check} reported (crash or deadlock?):\n{output}")
        if not reports[check]["ok"]:
            pytest.fail(f"{check} failed on {nprocs} ranks:\n{reports[check]['detail']}")

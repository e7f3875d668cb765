"""The frameworks users launch DDP with, under torchrun with the gTop-k hook, its state built
before the framework starts the process group: a real PyTorch Lightning Trainer
(tests/programs/lightning_run.py) and a model prepared by Hugging Face Accelerate
(tests/programs/accelerate_run.py)."""

from __future__ import annotations

import importlib.util

import pytest

from mpi_launch import run


@pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="lightning not installed")
@pytest.mark.parametrize("launcher", ["torchrun", "mpiexec"])
def test_lightning_trainer_with_the_gtopk_hook(launcher):
    proc = run(2, ["tests/programs/lightning_run.py"], timeout=240, launcher=launcher)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "LIGHTNING OK" in out, out[-4000:]


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None, reason="accelerate not installed")
def test_accelerate_prepared_model_with_the_gtopk_hook_under_torchrun():
    proc = run(2, ["tests/programs/accelerate_run.py"], timeout=240, launcher="torchrun")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "ACCELERATE OK" in out, out[-4000:]

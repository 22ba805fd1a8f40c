"""Shared fixtures: run the real ``train.py`` in a subprocess, compose the real configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# debug=fast with small PPO minibatches: 4 iterations of 64 frames, 2 epochs x 2 minibatches each
PPO_FAST = (
    "debug=fast",
    "algo.frames_per_batch=64",
    "algo.minibatch_size=32",
    "algo.epochs=2",
    "algo.total_frames=256",
)

# debug=fast_lm (budgets only) on a very small tiny_lm, with a reward every completion earns some of
LM_FAST = (
    "debug=fast_lm", "+algo.rewards.length=tests.rewards_for_tests.length_reward", "model.hidden_size=32", "model.num_layers=1",
    "model.num_heads=2", "model.intermediate_size=64",
)  # fmt: skip

torch.set_num_threads(1)
torch.set_flush_denormal(True)
warnings.filterwarnings("ignore", category=UserWarning, module="torchrl")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"HYDRA_FULL_ERROR": "0", "WANDB_SILENT": "true"})
    env.update(extra or {})
    return env


class TrainRun:
    def __init__(self, proc: subprocess.CompletedProcess, run_dir: Path) -> None:
        self.proc = proc
        self.run_dir = run_dir
        self.output = proc.stdout + proc.stderr

    @property
    def summary(self) -> dict:
        return json.loads((self.run_dir / "summary.json").read_text())


@pytest.fixture
def run_train(tmp_path):
    """``run_train(*overrides, expect_ok=True)`` runs ``python train.py`` in ``tmp_path/run``."""

    def _start(overrides, run_dir, env) -> tuple[subprocess.Popen, Path]:
        run_dir = run_dir or tmp_path / "run"
        args = [sys.executable, str(ROOT / "train.py"), *overrides]
        if not any(o.startswith("hydra.run.dir=") or o == "-m" for o in overrides):
            args.append(f"hydra.run.dir={run_dir}")
        popen = subprocess.Popen(
            args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(env)
        )
        return popen, run_dir

    def _finish(popen, run_dir, expect_ok, timeout) -> TrainRun:
        try:
            stdout, stderr = popen.communicate(timeout=timeout)
        except BaseException:  # our timeout, pytest-timeout's, Ctrl-C: no train.py left running
            popen.kill()
            popen.communicate()
            raise
        result = TrainRun(subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr), run_dir)
        if expect_ok:
            assert popen.returncode == 0, result.output[-4000:]
        return result

    def _run(
        *overrides: str,
        expect_ok: bool = True,
        run_dir: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 300,
    ) -> TrainRun:
        popen, run_dir = _start(overrides, run_dir, env)
        return _finish(popen, run_dir, expect_ok, timeout)

    def _together(*jobs: tuple, timeout: float = 300) -> list[TrainRun]:
        """Independent ``(overrides, run_dir[, expect_ok])`` runs started at once: a train.py
        process spends most of its ~6 s importing torch and Lightning on one core, so two overlap
        well on two."""
        started = [(*_start(job[0], job[1], None), job[2] if len(job) > 2 else True) for job in jobs]
        return [_finish(popen, run_dir, ok, timeout) for popen, run_dir, ok in started]

    _run.together = _together
    return _run


@pytest.fixture
def compose_cfg(tmp_path):
    """Compose ``configs/train.yaml`` with overrides, as ``train.py`` would (output in tmp_path)."""
    from hydra import compose, initialize_config_dir

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            return compose("train", overrides=[f"output_dir={tmp_path}", *overrides])

    return _compose

"""examples/custom_project: plmods used as a library by a user's own Lightning project.

The example is run as its user would run it: ``python -m custom_project.train`` in a subprocess,
from a directory outside the checkout, with only the example on ``PYTHONPATH`` (plmods is the
installed package). It brings its own gymnasium env (``GoRight-v0``, PPO) and its own GRPO reward
(``shorter_is_better``), its own Trainer, checkpoints and CSV logs.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "custom_project"
CORRIDOR = 8  # GoRight-v0: cells (the observation is the one-hot position), 20 steps at most
MAX_STEPS = 20
SHORT_WEIGHT = 0.5  # the weight of the "short" reward term in custom_project.train.build_grpo


def _load_file(name: str, path: Path):
    """A module of the example loaded from its file, under a private name (not the package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(cwd: Path, *args: str, extra_env: dict[str, str] | None = None) -> dict:
    """``python -m custom_project.train --no-progress-bar *args`` in ``cwd``; its printed result."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(EXAMPLE), os.environ.get("PYTHONPATH")) if p)
    env.update(extra_env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "custom_project.train", "--no-progress-bar", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _checkpoint(out: Path, example_code: bool = False) -> dict:
    """``<out>/checkpoints/last.ckpt``, loaded the standard way: weights-only, in a process
    that never imported the example (a GRPO checkpoint names the custom reward by its dotted path)."""
    path = out / "checkpoints" / "last.ckpt"
    assert path.is_file()
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if example_code:
        assert "custom_project.rewards.shorter_is_better" in str(checkpoint["hyper_parameters"]["rewards"])
    return checkpoint


def _rows(out: Path, version: int) -> list[dict[str, float]]:
    """metrics.csv of one invocation: every row, empty cells left out, values as floats."""
    with open(out / "logs" / f"version_{version}" / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def _column(rows: list[dict[str, float]], key: str) -> list[float]:
    return [row[key] for row in rows if key in row]


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_ppo_on_the_custom_env_checkpoints_and_resumes(tmp_path):
    out = tmp_path / "ppo"
    first = _run(tmp_path, "--out-dir", str(out), "--max-epochs", "2")
    assert (first["algo"], first["first_iteration"], first["iteration"]) == ("ppo", 0, 2)
    c1 = _checkpoint(out)
    hp = c1["hyper_parameters"]
    steps = hp["epochs"] * hp["frames_per_batch"] // hp["minibatch_size"]  # optimizer steps per iteration
    assert c1["plmods"]["iteration"] == 2
    assert c1["global_step"] == first["global_step"] == 2 * steps
    assert c1["plmods"]["frames"] == 2 * hp["frames_per_batch"]

    # the env is the example's own GoRight-v0: one-hot observations of 8 cells, 2 actions, episodes
    # of at most 20 steps that return 0 or 1 (CartPole would give 4 inputs and returns up to 500)
    assert _summary(out)["env"] == "GoRight-v0"
    inputs = {v.shape[-1] for k, v in c1["state_dict"].items() if v.dim() == 2}
    assert CORRIDOR in inputs
    actor_out = [v.shape[0] for k, v in c1["state_dict"].items() if "actor" in k and k.endswith("weight")][-1]
    assert actor_out == 2
    rows = _rows(out, 0)
    assert _column(rows, "iteration") == [1.0, 2.0]
    assert sorted(set(_column(rows, "frames"))) == [256.0, 512.0]
    lengths, returns = _column(rows, "train/episode_length"), _column(rows, "train/episode_return")
    assert lengths and all(CORRIDOR - 1 <= x <= MAX_STEPS for x in lengths)
    assert returns and all(0.0 <= x <= 1.0 for x in returns)

    # resume from last.ckpt up to 4 iterations in total: 2 more, continuing the counts
    second = _run(tmp_path, "--out-dir", str(out), "--max-epochs", "4", "--resume")
    assert second["first_iteration"] == 2  # restored before the first new iteration
    assert second["iteration"] == 4
    c2 = _checkpoint(out)
    assert c2["plmods"]["iteration"] == 4
    assert c2["global_step"] == second["global_step"] == 4 * steps
    assert c2["plmods"]["frames"] == 4 * hp["frames_per_batch"]
    # this invocation trained iterations 3 and 4 only (a fresh run would have logged 1..4)
    resumed = _rows(out, 1)
    assert _column(resumed, "iteration") == [3.0, 4.0]
    assert sorted(set(_column(resumed, "frames"))) == [768.0, 1024.0]
    assert any(not torch.equal(v, c2["state_dict"][k]) for k, v in c1["state_dict"].items())


def test_grpo_logs_the_custom_reward(tmp_path):
    out = tmp_path / "grpo"
    result = _run(tmp_path, "--out-dir", str(out), "--algo", "grpo", "--max-epochs", "2")
    assert result["iteration"] == 2
    ckpt = _checkpoint(out, example_code=True)
    assert ckpt["plmods"]["iteration"] == 2
    assert ckpt["global_step"] == 2 * ckpt["hyper_parameters"]["epochs"]  # mu steps per round

    rows = _rows(out, 0)
    train = [row for row in rows if "train/reward" in row]
    assert len(train) == 2
    for row in train:
        # the total is the weighted sum of the terms; the custom term is a mean of 16 values k/8
        assert row["train/reward"] == pytest.approx(row["train/reward/correct"] + SHORT_WEIGHT * row["train/reward/short"], abs=1e-6)
        assert 0.0 <= row["train/reward/short"] <= 1.0
        assert row["train/reward/short"] * 128 == pytest.approx(round(row["train/reward/short"] * 128), abs=1e-4)
    # the plmods callbacks ran in the user's Trainer: AdaptiveKL logged beta, RefPolicySync synced once (4 steps)
    assert _column(rows, "train/kl_coef")
    assert _column(rows, "train/ref_syncs") == [1.0]

    # the final evaluation's samples cover the whole held-out set (8 problems): each sample's
    # reward is exact_match + 0.5 * shorter_is_better of its completion, and val/reward/short is
    # the mean of shorter_is_better over them
    rewards = _load_file("_example_rewards", EXAMPLE / "custom_project" / "rewards.py")
    summary = _summary(out)
    samples = summary["samples"]
    assert len(samples) == 8
    completions = [s["completion"] for s in samples]
    short = rewards.shorter_is_better([s["prompt"] for s in samples], completions, answer=[s["answer"] for s in samples])
    assert short == [1.0 - min(len(c.strip()), 8) / 8 for c in completions]
    for sample, value in zip(samples, short, strict=True):
        correct = float(sample["completion"].strip() == sample["answer"])
        assert sample["reward"] == pytest.approx(correct + SHORT_WEIGHT * value, abs=1e-6)
    final = summary["val_history"][-1]
    assert final["iteration"] == 2
    assert final["val/reward/short"] == pytest.approx(sum(short) / len(short), abs=1e-6)
    assert _column(rows, "val/reward/short")[-1] == pytest.approx(sum(short) / len(short), abs=1e-6)


def test_the_custom_reward_and_env_by_hand():
    rewards = _load_file("_example_rewards", EXAMPLE / "custom_project" / "rewards.py")
    completions = ["", "12", " 12 ", "1234567", "12345678", "123456789"]
    assert rewards.shorter_is_better(["1+1="] * 6, completions, answer=["2"] * 6) == [1.0, 0.75, 0.75, 0.125, 0.0, 0.0]

    import gymnasium as gym

    registered = "GoRight-v0" in gym.registry
    try:
        envs = _load_file("_example_envs", EXAMPLE / "custom_project" / "envs.py")
        env = envs.GoRightEnv()
        obs, _ = env.reset(seed=0)
        assert obs.tolist() == [1.0] + [0.0] * 7 and obs.dtype.name == "float32"
        assert env.step(0)[:3][1:] == (0.0, False)  # the left wall: still in cell 0
        for step in range(CORRIDOR - 1):
            obs, reward, terminated, truncated, _ = env.step(1)
            assert (reward, terminated, truncated) == ((1.0, True, False) if step == CORRIDOR - 2 else (0.0, False, False))
        assert obs.argmax() == CORRIDOR - 1
        assert gym.spec("GoRight-v0").max_episode_steps == MAX_STEPS
    finally:
        if not registered:  # leave this process's gymnasium registry as it was
            gym.registry.pop("GoRight-v0", None)


@pytest.mark.slow
def test_ppo_solves_the_custom_env_and_resumes_exactly(tmp_path):
    """PPO solves GoRight-v0 within 12 iterations (3,072 frames: every deterministic evaluation
    episode reaches the end; a random walk rarely does in 20 steps), and 2 + 2 resumed iterations
    end with the weights of 4 uninterrupted ones."""
    solved = _run(tmp_path, "--out-dir", str(tmp_path / "solve"), "--max-epochs", "40")
    assert solved["solved"] and solved["iteration"] <= 12  # EarlyStopping ended the run once solved
    summary = _summary(tmp_path / "solve")
    assert summary["val_history"][0]["val/episode_return"] < 1.0
    assert summary["val_history"][-1]["val/episode_return"] == 1.0
    assert summary["val_history"][-1]["iteration"] == solved["iteration"]

    _run(tmp_path, "--out-dir", str(tmp_path / "full"), "--max-epochs", "4")
    _run(tmp_path, "--out-dir", str(tmp_path / "part"), "--max-epochs", "2")
    _run(tmp_path, "--out-dir", str(tmp_path / "part"), "--max-epochs", "4", "--resume")
    full, part = _checkpoint(tmp_path / "full"), _checkpoint(tmp_path / "part")
    assert full["global_step"] == part["global_step"]
    assert full["state_dict"].keys() == part["state_dict"].keys()
    for key, value in full["state_dict"].items():
        assert torch.equal(value, part["state_dict"][key]), key


@pytest.mark.slow
def test_grpo_resumes_exactly(tmp_path):
    # the custom reward function is a dotted path in the checkpoint's hyper_parameters: loads weights-only
    _run(tmp_path, "--out-dir", str(tmp_path / "full"), "--algo", "grpo", "--max-epochs", "4")
    _run(tmp_path, "--out-dir", str(tmp_path / "part"), "--algo", "grpo", "--max-epochs", "2")
    resumed = _run(tmp_path, "--out-dir", str(tmp_path / "part"), "--algo", "grpo", "--max-epochs", "4", "--resume")
    assert resumed["first_iteration"] == 2 and resumed["iteration"] == 4
    full, part = _checkpoint(tmp_path / "full", example_code=True), _checkpoint(tmp_path / "part", example_code=True)
    assert full["global_step"] == part["global_step"]
    for key, value in full["state_dict"].items():
        assert torch.equal(value, part["state_dict"][key]), key
    assert _column(_rows(tmp_path / "part", 1), "train/ref_syncs") == _column(_rows(tmp_path / "full", 0), "train/ref_syncs")[-1:]

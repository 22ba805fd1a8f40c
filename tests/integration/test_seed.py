"""Same seed, same run: identical initial weights and first-iteration metrics in two separate
processes, through the Python API and through train.py."""

import subprocess
import sys

import torch
from conftest import PPO_FAST, ROOT

SCRIPT = """
import hashlib, json, sys, torch, lightning as L
from plmods.algos import ControlModule
from plmods.envs import ControlEnv
torch.manual_seed(int(sys.argv[2]))  # whatever the global RNG holds, the module's seed decides
module = ControlModule.ppo(ControlEnv("CartPole-v1", num_envs=4, max_episode_steps=50), seed=int(sys.argv[1]),
                   frames_per_batch=64, minibatch_size=16, epochs=2, total_frames=64, eval_episodes=2)
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in module.loss_module.parameters()))
trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, check_val_every_n_epoch=10)
trainer.fit(module)
metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/") and k != "train/lr"}
print(json.dumps({"init": digest.hexdigest(), "metrics": metrics}))
"""


def _python_api(*runs: tuple[int, int]) -> list[str]:
    """The last stdout line of the script for each (seed, global seed), the processes run at once."""
    procs = [
        subprocess.Popen([sys.executable, "-c", SCRIPT, str(seed), str(global_seed)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        for seed, global_seed in runs
    ]  # fmt: skip
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr[-3000:]
    return [stdout.strip().splitlines()[-1] for stdout, _ in outputs]


def test_same_seed_same_weights_and_first_iteration_in_two_processes():
    a, b, other = _python_api((3, 1), (3, 2), (4, 1))
    assert a == b
    assert '"train/loss_objective"' in a
    assert other.split('"metrics"')[0] != a.split('"metrics"')[0]


def test_train_py_same_seed_same_first_iteration(run_train, tmp_path):
    runs = run_train.together(
        *(((*PPO_FAST, "logger=none", "trainer.max_epochs=1", f"seed={seed}"), tmp_path / name)
          for seed, name in ((7, "a"), (7, "b"), (8, "c")))
    )  # fmt: skip
    a, b, other = (torch.load(run.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for run in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], other[k]) for k in a)

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


def _python_api(seed: int, global_seed: int) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(seed), str(global_seed)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=True,
    )  # fmt: skip
    return proc.stdout.strip().splitlines()[-1]


def test_same_seed_same_weights_and_first_iteration_in_two_processes():
    a, b = _python_api(3, global_seed=1), _python_api(3, global_seed=2)
    assert a == b
    assert '"train/loss_objective"' in a
    assert _python_api(4, global_seed=1).split('"metrics"')[0] != a.split('"metrics"')[0]


def test_train_py_same_seed_same_first_iteration(run_train, tmp_path):
    def first_iteration(seed, name):
        run = run_train(*PPO_FAST, "logger=none", "trainer.max_epochs=1", f"seed={seed}", run_dir=tmp_path / name)
        return torch.load(run.run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]

    a, b, other = first_iteration(7, "a"), first_iteration(7, "b"), first_iteration(8, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], other[k]) for k in a)

"""RLProgressBar: what the bar shows for control and GRPO runs."""

from types import SimpleNamespace

import torch

from plmods.callbacks import RLProgressBar


class _NoPenalty:
    @property
    def kl_coef(self):
        raise AttributeError("kl_coef: the PPO loss has no KL penalty coefficient (beta).")


def _shown(metrics, module):
    trainer = SimpleNamespace(callback_metrics={k: torch.tensor(v) for k, v in metrics.items()})
    return RLProgressBar().get_metrics(trainer, module)


def test_control_bar_shows_frames_returns_kl_beta_and_fps():
    metrics = {"frames": 12288.0, "train/episode_return": 87.25, "val/episode_return": 120.0,
               "train/kl": 0.0123, "train/approx_kl": 0.5, "perf/fps": 2937.4}
    assert _shown(metrics, SimpleNamespace(kl_coef=0.25)) == {
        "frames": "12,288", "return": "87.25", "val_return": "120", "kl": "0.0123", "fps": "2,937", "β": "0.25",
    }
    # PPO-clip: no penalty, no β; the KL shown is approx_kl when no post-update KL is logged
    del metrics["train/kl"]
    assert _shown(metrics, _NoPenalty()) == {
        "frames": "12,288", "return": "87.25", "val_return": "120", "kl": "0.5", "fps": "2,937",
    }


def test_grpo_bar_shows_reward_accuracy_kl_to_ref_and_tokens_per_second():
    metrics = {"train/reward": 0.4375, "val/accuracy": 0.5, "train/kl_to_ref": 0.002, "perf/generated_tokens_per_s": 34.7}
    assert _shown(metrics, SimpleNamespace(kl_coef=0.04)) == {
        "reward": "0.4375", "val_acc": "0.5", "kl": "0.002", "tok/s": "35", "β": "0.04",
    }
    assert "β" not in _shown(metrics, SimpleNamespace(kl_coef=0.0))  # β = 0: no penalty to show

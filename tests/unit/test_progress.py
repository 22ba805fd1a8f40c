"""RLProgressBar: what the bar shows for control and GRPO runs."""

from types import SimpleNamespace

import torch

from plmods.callbacks import RLProgressBar


def _module(kl_coef):
    """A plmods.protocols.KLControlled module (kl_coef None: no KL penalty, as PPO-clip)."""
    return SimpleNamespace(kl_coef=kl_coef, measured_kl=None)


def _shown(metrics, module):
    trainer = SimpleNamespace(callback_metrics={k: torch.tensor(v) for k, v in metrics.items()})
    return RLProgressBar().get_metrics(trainer, module)


def test_control_bar_shows_frames_returns_kl_beta_and_fps():
    metrics = {"frames": 12288.0, "train/episode_return": 87.25, "val/episode_return": 120.0,
               "train/kl": 0.0123, "train/approx_kl": 0.5, "perf/fps": 2937.4}
    assert _shown(metrics, _module(0.25)) == {
        "frames": "12,288", "return": "87.25", "val_return": "120", "kl": "0.0123", "fps": "2,937", "β": "0.25",
    }
    # PPO-clip: no penalty, no β; the KL shown is approx_kl when no post-update KL is logged
    del metrics["train/kl"]
    assert _shown(metrics, _module(None)) == {
        "frames": "12,288", "return": "87.25", "val_return": "120", "kl": "0.5", "fps": "2,937",
    }


def test_grpo_bar_shows_reward_accuracy_kl_to_ref_and_tokens_per_second():
    metrics = {"train/reward": 0.4375, "val/accuracy": 0.5, "train/kl_to_ref": 0.002, "perf/generated_tokens_per_s": 34.7}
    assert _shown(metrics, _module(0.04)) == {
        "reward": "0.4375", "val_acc": "0.5", "kl": "0.002", "tok/s": "35", "β": "0.04",
    }
    assert "β" not in _shown(metrics, _module(0.0))  # β = 0: no penalty to show


def _budget_bar():
    from lightning.pytorch.callbacks.progress.rich_progress import CustomProgress

    bar = RLProgressBar()
    bar.progress = CustomProgress(*bar.configure_columns(None), disable=True)
    bar.train_progress_bar_id = bar.progress.add_task("Iteration 4", total=1)
    return bar


def _drawn(bar) -> tuple[str, tuple[float, float]]:
    """(percent text, (completed, total) of the drawn bar) of the training task."""
    task = bar.progress.tasks[0]
    drawn = bar.progress.columns[1].render(task)
    return str(bar.progress.columns[2].render(task)), (drawn.completed, drawn.total)


def test_the_bar_fills_with_the_runs_budget_and_keeps_it_through_lightnings_epoch_reset():
    bar = _budget_bar()
    bar.show_budget(SimpleNamespace(budget=lambda: (768.0, 1024.0)))  # frames of total_frames
    assert _drawn(bar) == (" 75%", (768.0, 1024.0))
    bar.progress.reset(bar.train_progress_bar_id, total=1)  # what Lightning does at every epoch start
    assert _drawn(bar) == (" 75%", (768.0, 1024.0))
    bar.show_budget(SimpleNamespace(budget=lambda: (1100.0, 1024.0)))  # the last batch overshoots the budget
    assert _drawn(bar) == ("100%", (1024.0, 1024.0))


def test_a_module_without_a_budget_shows_lightnings_batch_count():
    bar = _budget_bar()
    bar.show_budget(SimpleNamespace())  # no budget(): nothing set
    bar.show_budget(SimpleNamespace(budget=lambda: None))
    bar.progress.update(bar.train_progress_bar_id, completed=1)
    assert _drawn(bar) == ("100%", (1.0, 1.0))


def test_plmods_modules_report_their_budget_in_their_own_units():
    from plmods.algos import ControlModule
    from plmods.envs import ControlEnv

    module = ControlModule.ppo(ControlEnv("CartPole-v1", num_envs=2), frames_per_batch=64, minibatch_size=32, total_frames=256)
    assert module.budget() == (0.0, 256.0) and not module.budget_spent()
    module.frames = 256
    assert module.budget() == (256.0, 256.0) and module.budget_spent()
    # the LM modules count iterations (tests/unit/test_lm_module.py builds one)
    from test_lm_module import _module as lm_module

    grpo = lm_module(total_iterations=3)
    assert grpo.budget() == (0.0, 3.0)
    grpo.iteration = 3
    assert grpo.budget_spent()

"""The update loop through a real Trainer: optimizer-step counts, target-KL early stop, PPO-KL."""

import lightning as L
import pytest

from plmods.algos import PPOKLModule, PPOModule
from plmods.envs import ControlEnv

ENV = ControlEnv("CartPole-v1", num_envs=4, max_episode_steps=50)
KW = {"frames_per_batch": 64, "minibatch_size": 16, "ppo_epochs": 3, "total_frames": 192, "eval_episodes": 2}


def _fit(module):
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=100,
    )
    trainer.fit(module)
    return trainer


def test_one_optimizer_step_per_minibatch():
    trainer = _fit(PPOModule(ENV, **KW))
    # 3 iterations x 3 epochs x 4 minibatches
    assert trainer.global_step == 36
    assert float(trainer.callback_metrics["train/stopped_early"]) == 0.0


def test_target_kl_stops_the_remaining_passes():
    # any update makes k3 > 0: each iteration stops after its second minibatch (the first sees
    # the unchanged policy, k3 = 0), so 3 iterations x 2 optimizer steps
    trainer = _fit(PPOModule(ENV, target_kl=1e-12, anneal_lr=False, **KW))
    assert trainer.global_step == 6
    assert trainer.global_step < 36
    assert float(trainer.callback_metrics["train/stopped_early"]) == 1.0


@pytest.mark.parametrize("kl_coef", [0.0, 3.0])
def test_ppo_kl_measures_kl_and_keeps_beta_without_callback(kl_coef):
    module = PPOKLModule(ENV, kl_coef=kl_coef, **KW)
    trainer = _fit(module)
    assert trainer.global_step == 36
    assert module.measured_kl is not None and module.measured_kl >= 0
    assert module.kl_coef == kl_coef
    assert float(trainer.callback_metrics["train/kl"]) == pytest.approx(module.measured_kl)

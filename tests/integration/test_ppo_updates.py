"""The update loop through a real Trainer: optimizer-step counts, target-KL early stop, annealing,
PPO-KL's measured KL. Every module is built after seeding (its own ``seed`` fixes the weights)."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from plmods.algos import ControlModule
from plmods.envs import ControlEnv

ENV = ControlEnv("CartPole-v1", num_envs=4, max_episode_steps=50)
# 3 iterations of 64 frames, 3 epochs x 4 minibatches each
KW = {"frames_per_batch": 64, "minibatch_size": 16, "epochs": 3, "total_frames": 192, "eval_episodes": 2}


def _fit(module, callbacks=()):
    trainer = L.Trainer(
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=100,
        callbacks=list(callbacks),
    )
    trainer.fit(module)
    return trainer


def test_one_optimizer_step_per_minibatch():
    trainer = _fit(ControlModule.ppo(ENV, **KW))
    # 3 iterations x 3 epochs x 4 minibatches
    assert trainer.global_step == 36
    assert float(trainer.callback_metrics["train/stopped_early"]) == 0.0


class StepsPerIteration(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        self.start = trainer.global_step

    def on_train_epoch_end(self, trainer, pl_module):
        self.steps = [*getattr(self, "steps", []), trainer.global_step - self.start]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_target_kl_stops_right_after_the_minibatch_that_exceeded_it(seed):
    # The first minibatch sees the unchanged policy: k3 = 0 exactly (expm1(0) - 0), no stop.
    # Any update makes k3 > 1e-12, so the second minibatch exceeds the target, takes its step and
    # the iteration ends: 2 optimizer steps in each of the 3 iterations, for every seed.
    counter = StepsPerIteration()
    trainer = _fit(ControlModule.ppo(ENV, target_kl=1e-12, anneal_lr=False, seed=seed, **KW), [counter])
    assert counter.steps == [2, 2, 2]
    assert trainer.global_step == 6
    assert float(trainer.callback_metrics["train/stopped_early"]) == 1.0


def test_target_kl_never_reached_takes_every_step():
    counter = StepsPerIteration()
    _fit(ControlModule.ppo(ENV, target_kl=10.0, **KW), [counter])
    assert counter.steps == [12, 12, 12]


class Schedules(Callback):
    """The lr and clip range each iteration's updates ran with."""

    def __init__(self):
        self.lr, self.clip = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.lr.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.clip.append(float(pl_module.loss_module.clip_epsilon))


def test_annealing_uses_one_minus_i_over_n():
    # N = 256 / 64 = 4 iterations: i = 0..3 runs 1, 3/4, 1/2, 1/4 of the rate (never 0)
    schedules = Schedules()
    module = ControlModule.ppo(ENV, **(KW | {"total_frames": 256, "lr": 0.004, "clip_epsilon": 0.2}))
    _fit(module, [schedules])
    assert schedules.lr == pytest.approx([0.004, 0.003, 0.002, 0.001], abs=1e-12)
    assert schedules.clip == pytest.approx([0.2, 0.15, 0.1, 0.05], abs=1e-7)
    assert isinstance(module.lr_schedulers(), torch.optim.lr_scheduler.LambdaLR)


def test_no_annealing_keeps_the_rates():
    schedules = Schedules()
    _fit(ControlModule.ppo(ENV, anneal_lr=False, anneal_clip_epsilon=False, lr=0.004, **KW), [schedules])
    assert schedules.lr == [0.004] * 3
    assert schedules.clip == pytest.approx([0.2] * 3)


class PostUpdateKL(Callback):
    """KL(pi_old || pi_new) by hand: pi_old are the logits the collector stored in the batch (the
    policy that sampled it, i.e. the one before the iteration's updates), pi_new the actor after."""

    def __init__(self):
        self.expected, self.measured, self.penalty = [], [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with torch.no_grad():
            p_old = batch["logits"].softmax(-1)
            new_logits = pl_module.actor.module[0](batch.select("observation").clone())["logits"]
            p_new = new_logits.softmax(-1)
            kl = (p_old * (p_old.log() - p_new.log())).sum(-1).mean()
        self.expected.append(float(kl))
        self.measured.append(pl_module.measured_kl)
        self.penalty.append(float(pl_module.iteration_mean("kl_penalty")))


@pytest.mark.parametrize("kl_coef", [0.0, 3.0])
def test_ppo_kl_measures_the_kl_between_the_policies_before_and_after_the_update(kl_coef):
    probe = PostUpdateKL()
    module = ControlModule.ppo_kl(ENV, kl_coef=kl_coef, lr=3e-3, **KW)
    trainer = _fit(module, [probe])
    assert trainer.global_step == 36
    assert module.kl_coef == kl_coef  # no callback: beta is kept
    assert probe.measured == pytest.approx(probe.expected, rel=1e-4, abs=1e-9)
    assert all(k > 0 for k in probe.measured)
    if kl_coef == 0:
        # with nothing pulling it back the KL grows over the iteration, so the old measure (the
        # mean of the KLs the minibatches saw before their steps) stays well below the real one
        assert all(p < 0.8 * k for p, k in zip(probe.penalty, probe.measured, strict=True))
    assert float(trainer.callback_metrics["train/kl"]) == pytest.approx(module.measured_kl)


class RecordsStaleness(ControlModule):
    """Before each update: how far the batch's stored log-probs are from the current policy's."""

    def update(self, batch):
        with torch.no_grad():
            current = self.actor.get_dist(batch.select("observation")).log_prob(batch["action"])
        self.gaps = [*getattr(self, "gaps", []), float((current - batch["action_log_prob"]).abs().max())]
        super().update(batch)


@pytest.mark.parametrize("batching", [{"episodes_per_batch": 8}, {"episodes_per_batch": None, "frames_per_update": 200}])
def test_reinforce_updates_only_on_steps_of_the_current_policy(batching):
    module = RecordsStaleness.reinforce(ENV, frames_per_batch=32, total_frames=3000, eval_episodes=2, lr=1e-2, **batching)
    _fit(module)
    assert len(module.gaps) >= 4
    assert max(module.gaps) < 1e-5, module.gaps  # every step was sampled by the policy being updated

"""ControlModule's own logic at its edges: critic training follows the estimator, logged
iteration metrics, cross-rank averaging, the target-KL boundary, frames-mode rounds."""

import lightning as L
import pytest
import torch
from tensordict import TensorDict

import plmods.algos.control as control
import plmods.rollout.control_rollout as control_rollout
from plmods.algos import ControlModule
from plmods.envs import ControlEnv

ENV = ControlEnv("CartPole-v1", num_envs=4, max_episode_steps=30)


def _fit(module, epochs=2):
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, check_val_every_n_epoch=100)  # fmt: skip
    trainer.fit(module)
    return trainer


@pytest.mark.parametrize(("baseline", "critic_trained"), [("value", True), ("moving_average", False), ("none", False)])
def test_the_critic_is_trained_only_when_the_advantage_uses_it(baseline, critic_trained):
    module = ControlModule.reinforce(ENV, baseline=baseline, episodes_per_batch=4, frames_per_batch=32, eval_episodes=1)
    before = [p.detach().clone() for p in module.critic.parameters()]
    trainer = _fit(module)
    changed = any(not torch.equal(a, b) for a, b in zip(before, module.critic.parameters(), strict=True))
    assert changed == critic_trained
    metrics = trainer.callback_metrics
    assert ("train/loss_value" in metrics) == critic_trained
    assert 0 < float(metrics["train/frames_trained"]) <= module.frames
    assert float(metrics["train/advantage_std"]) == pytest.approx(1.0, abs=1e-4)  # normalised advantages
    if baseline == "moving_average":
        assert float(metrics["train/baseline"]) == pytest.approx(float(module.advantage_module.moving_baseline))
        assert float(metrics["train/baseline"]) > 0  # CartPole returns-to-go are positive
    else:
        assert "train/baseline" not in metrics


class _TwoIdenticalRanks:
    """Stands in for 2 ranks that hold the same values: sums double."""

    world_size = 2

    @staticmethod
    def sum_over_ranks(value):
        return value * 2


def test_cross_rank_quantities_are_means_over_ranks(monkeypatch):
    module = ControlModule.ppo(ENV, frames_per_batch=64, minibatch_size=32, total_frames=640)
    assert module.planned_iterations() == 10
    monkeypatch.setattr(ControlModule, "world_size", property(lambda self: 2))
    monkeypatch.setattr(module, "sum_over_ranks", _TwoIdenticalRanks.sum_over_ranks)
    assert module.planned_iterations() == 5  # each of the 2 ranks collects 64 frames per iteration
    assert module._kl_exceeds(torch.tensor(0.5), 0.4) and not module._kl_exceeds(torch.tensor(0.3), 0.4)


def test_target_kl_stops_only_above_the_target():
    module = ControlModule.ppo(ENV, frames_per_batch=64, minibatch_size=32)
    assert not module._kl_exceeds(torch.tensor(0.02), 0.02)
    assert module._kl_exceeds(torch.tensor(0.0200001), 0.02)


def test_measured_kl_is_the_rank_mean(monkeypatch):
    module = ControlModule.ppo_kl(ENV, frames_per_batch=64, minibatch_size=32, total_frames=64, eval_episodes=1)
    trainer = _fit(module, epochs=1)
    single = module.measured_kl
    assert single > 0 and float(trainer.callback_metrics["train/kl"]) == pytest.approx(single)
    monkeypatch.setattr(control, "policy_kl", lambda actor, batch: torch.tensor(0.25))
    monkeypatch.setattr(ControlModule, "world_size", property(lambda self: 2))
    monkeypatch.setattr(module, "sum_over_ranks", _TwoIdenticalRanks.sum_over_ranks)
    monkeypatch.setattr(module, "minibatches", lambda batch: iter(()))
    monkeypatch.setattr(module, "accumulate_iteration", lambda metrics: None)
    module.update(TensorDict({"advantage": torch.ones(4, 1)}, [4]))
    assert module.measured_kl == 0.25


@pytest.mark.parametrize(("frames_per_update", "rounds"), [(20, 2), (21, 3), (30, 3), (10, 1)])
def test_frames_mode_collects_rounds_until_the_target(monkeypatch, frames_per_update, rounds):
    module = ControlModule.reinforce(ENV, frames_per_update=frames_per_update, frames_per_batch=32)
    calls = []

    def ten_frames(poll, num_envs, per_env):
        calls.append(per_env)
        return TensorDict({"x": torch.full((10,), float(len(calls)))}, [10])

    monkeypatch.setattr(control_rollout, "whole_episodes", ten_frames)
    module.rollout.collector = type("C", (), {"reset": lambda self: None})()
    module.rollout._iter = iter(())
    batch, _ = module.rollout.collect()
    assert len(calls) == rounds and calls == [1] * rounds  # one episode per env per round
    assert batch.numel() == 10 * rounds
    assert batch["x"].tolist() == [float(i) for i in range(1, rounds + 1) for _ in range(10)]


def test_injected_parts_may_be_plain_classes_and_must_be_callables():
    from torchrl.objectives import ReinforceLoss

    from plmods.errors import ConfigError
    from plmods.rollout.returns import MonteCarloAdvantage

    module = ControlModule(ENV, loss=ReinforceLoss, advantage=MonteCarloAdvantage, episodes_per_batch=4,
                           minibatch_size=None, frames_per_batch=32)  # fmt: skip
    assert module.algorithm == "REINFORCE" and module.train_critic
    with pytest.raises(ConfigError, match=r"^loss must be a callable \(a Hydra node with _partial_: true\), got 3\.$"):
        ControlModule(ENV, loss=3, advantage=MonteCarloAdvantage)


def test_reinforce_rejects_both_batch_sizes():
    from plmods.errors import ConfigError

    with pytest.raises(ConfigError, match="^set at most one of episodes_per_batch and frames_per_update"):
        ControlModule.reinforce(ENV, episodes_per_batch=8, frames_per_update=300)


def test_each_epoch_visits_every_transition_once():
    module = ControlModule.ppo(ENV, frames_per_batch=64, minibatch_size=16, epochs=3)
    batch = TensorDict({"index": torch.arange(64)}, [64])
    seen = [mb["index"].tolist() for mb in module.minibatches(batch)]
    assert len(seen) == 12 and all(len(mb) == 16 for mb in seen)
    for epoch in range(3):
        assert sorted(i for mb in seen[4 * epoch : 4 * epoch + 4] for i in mb) == list(range(64))
    assert seen[:4] != seen[4:8]  # a new permutation each epoch


def test_builders_forward_every_argument_to_the_loss_and_the_estimator():
    ppo = ControlModule.ppo(
        ENV, clip_epsilon=0.3, clip_value=True, entropy_coeff=0.05, critic_coeff=0.25, loss_critic_type="l1",
        normalize_advantage=False, gamma=0.9, lmbda=0.7, frames_per_batch=64, minibatch_size=32,
    )  # fmt: skip
    loss = ppo.loss_module
    assert float(loss.clip_epsilon) == pytest.approx(0.3) and bool(loss.clip_value)
    assert float(loss.entropy_coeff) == pytest.approx(0.05) and loss.entropy_bonus is True
    assert float(loss.critic_coeff) == pytest.approx(0.25) and loss.loss_critic_type == "l1"
    assert loss.normalize_advantage is False
    assert float(ppo.advantage_module.gamma) == pytest.approx(0.9)
    assert float(ppo.advantage_module.lmbda) == pytest.approx(0.7)
    kl = ControlModule.ppo_kl(ENV, kl_coef=0.3, samples_mc_kl=3, critic_coeff=0.75, gamma=0.95, frames_per_batch=64,
                              minibatch_size=32)  # fmt: skip
    assert kl.kl_coef == pytest.approx(0.3) and kl.loss_module.samples_mc_kl == 3
    assert float(kl.loss_module.critic_coeff) == pytest.approx(0.75)
    assert (kl.loss_module.increment, kl.loss_module.decrement) == (1.0, 1.0)
    assert float(kl.advantage_module.gamma) == pytest.approx(0.95)


def test_annealing_with_episode_batches_follows_the_unspent_frame_budget():
    """The audit's defect: with episode batches frames_per_batch is only the polling size, so
    N = ceil(total_frames / frames_per_batch) = 38 for a 600-frame run that took 4 iterations, and
    the lr ended at 0.92 lr_0. The factor is the unspent share of the frame budget at each
    iteration's start."""

    class Record(L.Callback):
        rows: list = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            self.rows.append((module.frames - module._iter_frames, lr))

    lr0, total = 0.01, 600
    module = ControlModule.reinforce(ENV, episodes_per_batch=4, frames_per_batch=16, total_frames=total, anneal_lr=True, lr=lr0,
                                     eval_episodes=1)  # fmt: skip
    record = Record()
    trainer = L.Trainer(max_epochs=1000, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[record])  # fmt: skip
    trainer.fit(module)
    assert len(record.rows) >= 3 and module.frames >= total
    for frames_before, lr in record.rows:
        assert lr == pytest.approx(lr0 * (1 - frames_before / total), rel=1e-6)
    assert record.rows[-1][1] < 0.5 * lr0  # the last iteration runs well below lr_0 (was 0.92 lr_0)

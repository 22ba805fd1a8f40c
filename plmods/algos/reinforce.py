"""REINFORCE (Williams 1992) with a selectable baseline, on torchrl's ``ReinforceLoss``.

Policy-gradient theorem with Monte-Carlo returns (seeds 001, 003):

    grad J = E_tau[ sum_t grad log pi(a_t | s_t) * (G_t - b_t) ],   G_t = sum_{k>=t} gamma^(k-t) r_k

One update per batch of whole episodes, every step of them sampled by the current policy
(REINFORCE is on-policy): each iteration resets every env (``Collector.reset()``) and collects the
first ``episodes_per_batch / num_envs`` episodes of each env (``plmods.rollout.collector.
whole_episodes``), concatenated along time, so every G_t is an exact Monte-Carlo return.
torchrl's ``trajs_per_batch`` collector was used before: it keeps in-flight and queued episodes
across updates, so 40-81% of a batch's steps had been sampled by earlier policies. The batch size
is given in episodes, or in frames (rounds of one episode per env until at least that many
frames). Baselines: ``none`` (b = 0), ``moving_average`` (b is a running
mean of the batches' returns-to-go, updated after use so it never depends on the current actions)
and ``value`` (b_t = V(s_t), a critic regressed on G_t).
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.objectives import ReinforceLoss
from torchrl.objectives.value.functional import reward2go

from plmods.algos.base import RLModule, check_update_settings
from plmods.envs.control import ControlEnv
from plmods.errors import require
from plmods.models.control import MLPActorCritic
from plmods.rollout.collector import whole_episodes

__all__ = ["BASELINES", "ReinforceModule", "returns_to_go"]

BASELINES = ("none", "moving_average", "value")


def returns_to_go(reward: torch.Tensor, done: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t for trajectories laid out ``[..., T, 1]`` (torchrl's ``reward2go``; ``done`` ends an
    episode, so concatenated episodes stay separate)."""
    return reward2go(reward, done, gamma, time_dim=-2)


class ReinforceModule(RLModule):
    """REINFORCE as a LightningModule: one epoch = one batch of whole episodes, one update.

    Args:
        env: env factory; built per rank in ``setup``.
        model: actor/critic factory (the critic is trained only with ``baseline=value``).
        episodes_per_batch: whole episodes per policy update, a multiple of ``env.num_envs``
            (each env contributes the same number; ``None``: use ``frames_per_update``).
        frames_per_update: if set, rounds of one whole episode per env until at least this many
            frames per update (instead of a number of episodes).
        frames_per_batch: collector polling size (frames stepped between trajectory checks;
            multiple of ``env.num_envs``); the update always sees whole episodes.
        total_frames: frame budget (frames of the episodes trained on).
        gamma: discount of the returns-to-go.
        baseline: ``none``, ``moving_average`` or ``value``.
        baseline_decay: weight of the old value in the moving-average baseline.
        normalize_advantage: standardise the batch's advantages.
        lr: Adam learning rate.
        loss_critic_type: value loss for ``baseline=value`` (``l1``, ``l2``, ``smooth_l1``).
        max_grad_norm: clip the global gradient norm (``None``: no clipping).
        seed: seed of the initial weights, the training RNG and the training envs.
        eval_episodes: deterministic episodes per evaluation.
    """

    def __init__(
        self,
        env: ControlEnv,
        *,
        model: MLPActorCritic | None = None,
        episodes_per_batch: int | None = 16,
        frames_per_update: int | None = None,
        frames_per_batch: int = 256,
        total_frames: int = 300_000,
        gamma: float = 0.99,
        baseline: str = "value",
        baseline_decay: float = 0.9,
        normalize_advantage: bool = True,
        lr: float = 3e-3,
        loss_critic_type: str = "l2",
        max_grad_norm: float | None = 1.0,
        seed: int = 0,
        eval_episodes: int = 10,
    ) -> None:
        require(
            (episodes_per_batch is None) != (frames_per_update is None),
            "set exactly one of episodes_per_batch and frames_per_update (the other null), "
            f"got {episodes_per_batch} and {frames_per_update}.",
        )
        require(
            episodes_per_batch is None or (episodes_per_batch >= 1 and episodes_per_batch % env.num_envs == 0),
            f"episodes_per_batch={episodes_per_batch} must be a positive multiple of env.num_envs={env.num_envs} "
            "(every env contributes the same number of episodes).",
        )
        require(
            frames_per_update is None or frames_per_update >= 1,
            f"frames_per_update must be >= 1, got {frames_per_update}.",
        )
        require(0 < gamma <= 1, f"gamma must be in (0, 1], got {gamma}.")
        require(baseline in BASELINES, f"baseline must be one of {list(BASELINES)}, got {baseline!r}.")
        require(0 <= baseline_decay < 1, f"baseline_decay must be in [0, 1), got {baseline_decay}.")
        check_update_settings(lr, loss_critic_type, max_grad_norm)
        super().__init__(
            env=env, model=model, frames_per_batch=frames_per_batch, total_frames=total_frames, seed=seed,
            eval_episodes=eval_episodes,
        )  # fmt: skip
        self.save_hyperparameters(logger=False)
        self.loss_module = ReinforceLoss(self.actor, self.critic, loss_critic_type=loss_critic_type)
        # running mean of returns-to-go; a buffer so it is checkpointed
        self.register_buffer("moving_baseline", torch.zeros(()))
        self.register_buffer("moving_baseline_initialized", torch.zeros((), dtype=torch.bool))

    def next_collector_batch(self) -> TensorDictBase:
        """Whole episodes of the current policy, ``[frames]``: ``episodes_per_batch / num_envs``
        per env or, in frames mode, rounds of one per env until ``frames_per_update``."""
        num_envs = self.env_factory.num_envs
        episodes, frames = [], 0
        while True:
            # every episode starts after this reset, so no step of an earlier policy is kept
            self._collector.reset()
            per_env = (self.hparams.episodes_per_batch or num_envs) // num_envs
            episodes.append(whole_episodes(super().next_collector_batch, num_envs, per_env))
            frames += episodes[-1].numel()
            if self.hparams.frames_per_update is None or frames >= self.hparams.frames_per_update:
                return torch.cat(episodes, 0) if len(episodes) > 1 else episodes[0]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.loss_module.parameters(), lr=self.hparams.lr)

    def prepare_batch(self, batch: TensorDictBase) -> TensorDictBase:
        """Returns-to-go and advantages of the batch's ``N`` steps (whole episodes, in order)."""
        steps = batch
        g = returns_to_go(steps["next", "reward"], steps["next", "done"], self.hparams.gamma)  # [N, 1]
        steps.set("value_target", g)
        baseline = self.hparams.baseline
        with torch.no_grad():
            if baseline == "value":
                advantage = g - self.critic(steps.select("observation").clone())["state_value"]
            elif baseline == "moving_average":
                advantage = g - self.moving_baseline
                self._update_moving_baseline(g.mean())
            else:
                advantage = g.clone()
            if self.hparams.normalize_advantage and advantage.numel() > 1:
                advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        steps.set("advantage", advantage)
        return steps

    def _update_moving_baseline(self, batch_mean: torch.Tensor) -> None:
        """b <- decay * b + (1 - decay) * mean(G); the first batch sets b to its mean."""
        decay = self.hparams.baseline_decay if bool(self.moving_baseline_initialized) else 0.0
        self.moving_baseline.mul_(decay).add_((1 - decay) * batch_mean)
        self.moving_baseline_initialized.fill_(True)

    def update(self, batch: TensorDictBase) -> None:
        out = self.loss_module(batch)
        if self.hparams.baseline != "value":
            out = out.exclude("loss_value")  # no critic to train
        self.optimizer_step(self.total_loss(out), self.hparams.max_grad_norm)
        metrics = {"loss_actor": out["loss_actor"], "advantage_std": batch["advantage"].std()}
        if "loss_value" in out:
            metrics["loss_value"] = out["loss_value"]
        self.accumulate(metrics)
        self.accumulate_iteration(
            {"baseline": float(self.moving_baseline)} if self.hparams.baseline == "moving_average" else {}
        )

"""PPO on torchrl's ``ClipPPOLoss`` (and the shared PPO machinery) with ``GAE``.

Schulman et al. 2017, "Proximal Policy Optimization Algorithms":

    ratio_t = pi_theta(a_t | s_t) / pi_theta_old(a_t | s_t)
    L^CLIP = E_t[ min(ratio_t * A_t, clip(ratio_t, 1 - clip_epsilon, 1 + clip_epsilon) * A_t) ]
    loss   = -L^CLIP + critic_coeff * L^VF - entropy_coeff * H[pi_theta]

with A_t from GAE (Schulman et al. 2016): A_t = sum_l (gamma * lmbda)^l delta_{t+l},
delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_{t+1}) - V(s_t).
torchrl computes every term; these modules only schedule the data and sum ``loss_*`` keys.

Annealing (CleanRL's rule): iteration i of N (i = 0 .. N - 1, N = total_frames / frames per
iteration over all ranks) runs ``lr * (1 - i / N)`` and ``clip_epsilon * (1 - i / N)``: the first
iteration the full values, the last one 1 / N of them (never a wasted iteration at 0). The lr
follows a torch ``LambdaLR`` (checkpointed by Lightning, stepped once per iteration).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.data import LazyTensorStorage, ReplayBuffer, SamplerWithoutReplacement
from torchrl.objectives import LossModule
from torchrl.objectives.value import GAE

from plmods.algos.base import RLModule, check_update_settings
from plmods.algos.ppo_loss import K3ClipPPOLoss
from plmods.envs.control import ControlEnv
from plmods.errors import require
from plmods.models.control import MLPActorCritic

__all__ = ["PPOBase", "PPOModule"]

_LOGGED = (
    "loss_objective", "loss_critic", "loss_entropy", "clip_fraction", "entropy", "explained_variance", "approx_kl",
)  # fmt: skip


class PPOBase(RLModule):
    """What PPO-clip and PPO-penalty share: GAE, annealed Adam, ``ppo_epochs`` minibatch passes.

    Subclasses build ``self.loss_module`` (a torchrl PPO loss reporting ``approx_kl``, see
    ``plmods.algos.ppo_loss``) after ``super().__init__``. Arguments are documented on the
    concrete modules.
    """

    def __init__(
        self,
        *,
        env: ControlEnv,
        model: MLPActorCritic | None,
        frames_per_batch: int,
        total_frames: int,
        minibatch_size: int,
        ppo_epochs: int,
        lr: float,
        anneal_lr: bool,
        gamma: float,
        lmbda: float,
        normalize_advantage: bool,
        entropy_coeff: float,
        critic_coeff: float,
        loss_critic_type: str,
        max_grad_norm: float | None,
        seed: int,
        eval_episodes: int,
    ) -> None:
        # reject bad settings before anything is built, naming the setting and what is valid
        require(
            minibatch_size >= 1 and frames_per_batch % minibatch_size == 0,
            f"minibatch_size={minibatch_size} must be a positive divisor of frames_per_batch={frames_per_batch}.",
        )
        require(ppo_epochs >= 1, f"ppo_epochs must be >= 1, got {ppo_epochs}.")
        require(0 < gamma <= 1, f"gamma must be in (0, 1], got {gamma}.")
        require(0 <= lmbda <= 1, f"lmbda must be in [0, 1], got {lmbda}.")
        require(entropy_coeff >= 0, f"entropy_coeff must be >= 0, got {entropy_coeff}.")
        require(critic_coeff >= 0, f"critic_coeff must be >= 0, got {critic_coeff}.")
        check_update_settings(lr, loss_critic_type, max_grad_norm)
        super().__init__(
            env=env, model=model, frames_per_batch=frames_per_batch, total_frames=total_frames, seed=seed,
            eval_episodes=eval_episodes,
        )  # fmt: skip
        # records the concrete module's whole signature (Lightning reads every __init__ frame)
        self.save_hyperparameters(logger=False)
        # GAE is its own object (not registered: it holds no learnable state of its own).
        object.__setattr__(self, "advantage_module", GAE(gamma=gamma, lmbda=lmbda, value_network=self.critic))
        self.loss_module: LossModule
        self.stop_kl: float | None = None  # PPO-clip's target-KL early stop (None: off)

    # ------------------------------------------------------------------ schedules
    def num_iterations(self) -> int:
        """N: policy iterations in the frame budget (every rank collects ``frames_per_batch``)."""
        return math.ceil(self.total_frames / (self.frames_per_batch * self.world_size))

    def anneal_fraction(self, iteration: int) -> float:
        """1 - i / N for iteration i (0-based): the factor of the annealed schedules (CleanRL's rule)."""
        return max(0.0, 1.0 - iteration / self.num_iterations())

    def configure_optimizers(self) -> dict[str, Any]:
        # eps=1e-5 as in the PPO reference implementations (baselines, cleanrl, SB3)
        optimizer = torch.optim.Adam(self.loss_module.parameters(), lr=self.hparams.lr, eps=1e-5)
        factor = self.anneal_fraction if self.hparams.anneal_lr else (lambda _: 1.0)
        # stepped once per iteration in on_train_epoch_end (manual optimization: Lightning does
        # not step it); its state is in Lightning's checkpoints, so a resumed run anneals on time
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self.lr_schedulers().step()

    def prepare_batch(self, batch: TensorDictBase) -> TensorDictBase:
        """GAE with the current critic (no grad): writes ``advantage`` and ``value_target``."""
        self.anneal(self.anneal_fraction(self.iteration))
        with torch.no_grad():
            self.advantage_module(batch)
        return batch

    def anneal(self, frac: float) -> None:
        """Schedules other than the lr (which follows the LambdaLR) at the iteration's fraction."""

    # ------------------------------------------------------------------ updates
    def minibatches(self, batch: TensorDictBase) -> Iterator[TensorDictBase]:
        """``ppo_epochs`` passes over the batch in random minibatches (sampling without replacement).

        A new buffer per iteration: torchrl's sampler pre-draws the next permutation when a pass
        ends and ``empty()`` keeps it, which would carry hidden state across iterations (and break
        exact resume). Building the buffer costs ~0.8 ms.
        """
        buffer = ReplayBuffer(
            storage=LazyTensorStorage(self.frames_per_batch),
            sampler=SamplerWithoutReplacement(),
            batch_size=self.hparams.minibatch_size,
        )
        buffer.extend(batch.reshape(-1))
        for _ in range(self.hparams.ppo_epochs):
            yield from buffer

    def update(self, batch: TensorDictBase) -> None:
        """``ppo_epochs`` x minibatch optimizer steps. With a target KL, the iteration stops right
        after the optimizer step of the first minibatch whose ``approx_kl`` (measured before that
        step, against the batch's behaviour policy) exceeds the target: that minibatch's step is
        taken, the remaining ones are skipped (as in SB3 and CleanRL's ``--target-kl``)."""
        self.stopped_early = False
        for minibatch in self.minibatches(batch):
            out = self.loss_module(minibatch)
            self.optimizer_step(self.total_loss(out), self.hparams.max_grad_norm)
            metrics = {key: out[key] for key in _LOGGED if key in out}
            metrics.update(self.extra_metrics(out))
            self.accumulate(metrics)
            if self.stop_kl is not None and self._kl_exceeds(metrics["approx_kl"], self.stop_kl):
                self.stopped_early = True
                break
        self.accumulate_iteration({"stopped_early": float(self.stopped_early)})

    def extra_metrics(self, out: TensorDictBase) -> dict[str, torch.Tensor]:
        """Per-minibatch scalars a subclass adds to the iteration means."""
        return {}

    def _kl_exceeds(self, approx_kl: torch.Tensor, limit: float) -> bool:
        """Whether the approximate KL passed ``limit``, decided identically on every rank: a rank
        that stopped alone would leave the others waiting in the gradient all-reduce."""
        return bool(self.sum_over_ranks(approx_kl) / self.world_size > limit)


class PPOModule(PPOBase):
    """PPO-clip as a LightningModule: one epoch = collect, GAE, ``ppo_epochs`` minibatch passes.

    Args:
        env: env factory; built per rank in ``setup``.
        model: actor/critic factory.
        frames_per_batch: transitions per policy iteration (multiple of ``env.num_envs``).
        total_frames: frame budget (training stops there; horizon of the annealing schedules).
        minibatch_size: transitions per optimizer step; must divide ``frames_per_batch``.
        ppo_epochs: passes over each batch (one optimizer step per minibatch).
        lr: Adam learning rate.
        anneal_lr: iteration i of N runs ``lr * (1 - i / N)``.
        gamma: discount.
        lmbda: GAE lambda.
        clip_epsilon: PPO ratio clip range.
        anneal_clip_epsilon: iteration i of N clips at ``clip_epsilon * (1 - i / N)``.
        clip_value: also clip the value update to ``clip_epsilon`` around the old value.
        target_kl: stop an iteration's remaining minibatch passes right after the step of the
            first minibatch whose ``approx_kl`` (k3) exceeds it (``None``: off).
        normalize_advantage: standardise advantages per minibatch.
        entropy_coeff: weight of the entropy bonus.
        critic_coeff: weight of the value loss.
        loss_critic_type: ``l1``, ``l2`` or ``smooth_l1``.
        max_grad_norm: clip the global gradient norm (``None``: no clipping).
        seed: seed of the initial weights, the training RNG and the training envs.
        eval_episodes: deterministic episodes per evaluation.
    """

    def __init__(
        self,
        env: ControlEnv,
        *,
        model: MLPActorCritic | None = None,
        frames_per_batch: int = 512,
        total_frames: int = 100_000,
        minibatch_size: int = 256,
        ppo_epochs: int = 10,
        lr: float = 1e-3,
        anneal_lr: bool = True,
        gamma: float = 0.98,
        lmbda: float = 0.8,
        clip_epsilon: float = 0.2,
        anneal_clip_epsilon: bool = True,
        clip_value: bool = False,
        target_kl: float | None = None,
        normalize_advantage: bool = True,
        entropy_coeff: float = 0.0,
        critic_coeff: float = 0.5,
        loss_critic_type: str = "l2",
        max_grad_norm: float | None = 0.5,
        seed: int = 0,
        eval_episodes: int = 10,
    ) -> None:
        require(0 < clip_epsilon < 1, f"clip_epsilon must be in (0, 1), got {clip_epsilon}.")
        require(target_kl is None or target_kl > 0, f"target_kl must be > 0 or null, got {target_kl}.")
        super().__init__(
            env=env, model=model, frames_per_batch=frames_per_batch, total_frames=total_frames,
            minibatch_size=minibatch_size, ppo_epochs=ppo_epochs, lr=lr, anneal_lr=anneal_lr, gamma=gamma,
            lmbda=lmbda, normalize_advantage=normalize_advantage, entropy_coeff=entropy_coeff,
            critic_coeff=critic_coeff, loss_critic_type=loss_critic_type, max_grad_norm=max_grad_norm,
            seed=seed, eval_episodes=eval_episodes,
        )  # fmt: skip
        self.stop_kl = target_kl
        self.loss_module = K3ClipPPOLoss(
            self.actor,
            self.critic,
            clip_epsilon=clip_epsilon,
            clip_value=clip_value,
            entropy_bonus=entropy_coeff > 0,
            entropy_coeff=entropy_coeff,
            critic_coeff=critic_coeff,
            loss_critic_type=loss_critic_type,
            normalize_advantage=normalize_advantage,
        )

    def anneal(self, frac: float) -> None:
        if self.hparams.anneal_clip_epsilon:
            self.loss_module.clip_epsilon.fill_(self.hparams.clip_epsilon * frac)

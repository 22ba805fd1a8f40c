"""PPO with an adaptive KL penalty (PPO-penalty) on torchrl's ``KLPENPPOLoss``.

Schulman et al. 2017, section 4:

    L^KLPEN = E_t[ ratio_t * A_t - beta * KL(pi_old(. | s_t) || pi_theta(. | s_t)) ]

with the analytic KL when torchrl has one for the distribution pair (else a Monte-Carlo one).
torchrl's loss adapts ``beta`` inside ``forward()`` on every minibatch; here that is switched off
(``increment = decrement = 1``) so that beta changes only where we decide: once per policy
iteration, by the ``AdaptiveKL`` callback (``plmods.callbacks``), from the KL measured over the
whole iteration. The module exposes that through ``kl_coef`` and ``measured_kl``.

``measured_kl`` is seed 003's d = E_t[KL(pi_old(. | s_t) || pi_theta(. | s_t))] for the policy
*after* the iteration's updates: one no-grad pass over the iteration's batch once the epochs are
done (analytic KL for categorical actions, k3 at the batch's actions otherwise). The mean of the
penalty KLs the minibatches saw before each of their steps ran 2-5x below it on CartPole and
Acrobot, so the halve/double rule halved beta where it should have doubled it.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase

from plmods.algos.kl import policy_kl
from plmods.algos.ppo import PPOBase
from plmods.algos.ppo_loss import K3KLPENPPOLoss
from plmods.envs.control import ControlEnv
from plmods.errors import require
from plmods.models.control import MLPActorCritic

__all__ = ["PPOKLModule"]


class PPOKLModule(PPOBase):
    """PPO-penalty as a LightningModule: one epoch = collect, GAE, ``ppo_epochs`` minibatch passes.

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
        kl_coef: initial KL penalty coefficient beta (adapted by the ``AdaptiveKL`` callback).
        samples_mc_kl: samples of the Monte-Carlo KL when no analytic KL exists.
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
        kl_coef: float = 1.0,
        samples_mc_kl: int = 1,
        normalize_advantage: bool = True,
        entropy_coeff: float = 0.0,
        critic_coeff: float = 0.5,
        loss_critic_type: str = "l2",
        max_grad_norm: float | None = 0.5,
        seed: int = 0,
        eval_episodes: int = 10,
    ) -> None:
        require(kl_coef >= 0, f"kl_coef must be >= 0, got {kl_coef}.")
        require(samples_mc_kl >= 1, f"samples_mc_kl must be >= 1, got {samples_mc_kl}.")
        super().__init__(
            env=env, model=model, frames_per_batch=frames_per_batch, total_frames=total_frames,
            minibatch_size=minibatch_size, ppo_epochs=ppo_epochs, lr=lr, anneal_lr=anneal_lr, gamma=gamma,
            lmbda=lmbda, normalize_advantage=normalize_advantage, entropy_coeff=entropy_coeff,
            critic_coeff=critic_coeff, loss_critic_type=loss_critic_type, max_grad_norm=max_grad_norm,
            seed=seed, eval_episodes=eval_episodes,
        )  # fmt: skip
        self.loss_module = K3KLPENPPOLoss(
            self.actor,
            self.critic,
            beta=kl_coef,
            # torchrl's own per-minibatch beta rule off: beta *= 1.0 whatever the KL
            increment=1.0,
            decrement=1.0,
            samples_mc_kl=samples_mc_kl,
            entropy_bonus=entropy_coeff > 0,
            entropy_coeff=entropy_coeff,
            critic_coeff=critic_coeff,
            loss_critic_type=loss_critic_type,
            normalize_advantage=normalize_advantage,
        )
        self.measured_kl: float | None = None

    @property
    def kl_coef(self) -> float:
        """The KL penalty coefficient beta (torchrl's ``beta`` buffer: saved in checkpoints)."""
        return float(self.loss_module.beta)

    @kl_coef.setter
    def kl_coef(self, value: float) -> None:
        self.loss_module.beta.fill_(float(value))

    def update(self, batch: TensorDictBase) -> None:
        super().update(batch)
        # d = KL(pi_old || pi_new) over the iteration's batch, after its updates (logged as
        # train/kl), averaged over ranks so every rank adapts beta identically; beta itself is
        # logged by the AdaptiveKL callback as train/kl_coef
        kl = policy_kl(self.actor, batch)
        self.measured_kl = float(self.sum_over_ranks(kl) / self.world_size)
        self.accumulate_iteration({"kl": self.measured_kl})

    def extra_metrics(self, out: TensorDictBase) -> dict[str, torch.Tensor]:
        # the penalty's KL as each minibatch saw it before its step (a diagnostic, not d)
        return {"kl_penalty": out["kl"].mean()}

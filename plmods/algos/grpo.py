"""GRPO (Shao et al. 2024, DeepSeekMath; seeds 001 and 003) is a configuration of ``LMModule``::

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)                  rollout/group_advantage.py
    J   = E[ min(ratio A, clip(ratio, 1 - eps, 1 + eps) A) ] - beta KL_k3(pi || pi_ref)   algos/grpo_loss.py

``algo=grpo`` / ``LMModule.grpo(...)``. ``GRPOModule`` is the 0.1 class, kept for one release: it
takes the old flat arguments (``num_iterations`` for mu, ``kl_coef``, ``clip_epsilon``, ...) and
builds the same ``LMModule``, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from functools import partial
from typing import Any

from plmods.algos.grpo_loss import MaskedGRPOLoss
from plmods.algos.lm import LMModule
from plmods.envs.text import TextTask
from plmods.models.hf import HFCausalLM
from plmods.rollout.group_advantage import GroupRelativeAdvantage

__all__ = ["GRPOModule"]


class GRPOModule(LMModule):
    """Deprecated: ``LMModule.grpo(...)`` (Python) or ``algo=grpo`` (``train.py``)."""

    def __init__(
        self,
        env: TextTask,
        model: HFCausalLM | None = None,
        rewards: Mapping[str, Any] | None = None,
        accuracy_reward: str | None = None,
        advantage: Any = None,
        prompts_per_batch: int = 16,
        group_size: int = 8,
        max_new_tokens: int = 8,
        temperature: float = 1.0,
        num_iterations: int = 2,
        minibatch_size: int | None = None,
        micro_batch_size: int | None = None,
        total_iterations: int = 60,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = 1.0,
        clip_epsilon: float = 0.2,
        clip_epsilon_high: float | None = None,
        kl_coef: float = 0.0,
        aggregation: str = "token_mean",
        entropy_coeff: float = 0.0,
        drop_uniform_groups: bool = True,
        seed: int = 0,
        eval_problems: int = 200,
        eval_batch_size: int = 200,
        logged_samples: int = 16,
    ) -> None:
        warnings.warn(
            "GRPOModule is deprecated: use LMModule.grpo(...) (num_iterations is now epochs; clip_epsilon, kl_coef, "
            "aggregation and entropy_coeff belong to the loss), or algo=grpo.",
            DeprecationWarning,
            stacklevel=2,
        )
        loss = partial(
            MaskedGRPOLoss, clip_epsilon=clip_epsilon, clip_epsilon_high=clip_epsilon_high, kl_coef=kl_coef, kl_penalty="loss",
            aggregation=aggregation, entropy_coeff=entropy_coeff,
        )  # fmt: skip
        super().__init__(
            env, model, loss=loss, advantage=GroupRelativeAdvantage() if advantage is None else advantage, rewards=rewards,
            accuracy_reward=accuracy_reward, prompts_per_batch=prompts_per_batch, group_size=group_size,
            max_new_tokens=max_new_tokens, temperature=temperature, epochs=num_iterations, minibatch_size=minibatch_size,
            micro_batch_size=micro_batch_size, total_iterations=total_iterations, lr=lr, weight_decay=weight_decay,
            max_grad_norm=max_grad_norm, drop_uniform_groups=drop_uniform_groups, seed=seed, eval_problems=eval_problems,
            eval_batch_size=eval_batch_size, logged_samples=logged_samples,
        )  # fmt: skip

    @property
    def num_iterations(self) -> int:
        """Deprecated name of ``epochs`` (mu)."""
        return self.epochs

"""KL estimators shared by PPO, PPO-KL and GRPO.

Schulman's k3 estimator of KL(p || q) from samples x ~ p, with d = log q(x) - log p(x):

    k3 = (exp(d) - 1) - d  >= 0

computed per element as ``expm1(d) - d``: never negative (expm1(d) >= d for every real d, also in
floating point), exactly 0 where the two log-probs are equal, and accurate for tiny ``d``, where
the form ``mean(ratio) - 1 + mean(log p - log q)`` loses everything to cancellation (it returned
-1.4e-9 for identical policies and so could never be compared with a tight target).
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch.distributions import kl_divergence

__all__ = ["k3", "policy_kl"]


def k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """Per-element k3 estimate ``expm1(d) - d`` of KL(p || q), ``d = log q - log p`` at x ~ p."""
    return torch.expm1(log_ratio) - log_ratio


def policy_kl(actor, batch: TensorDictBase) -> torch.Tensor:
    """Mean KL(pi_old || pi) over ``batch`` (no grad): pi_old is the distribution the batch stores
    (its parameters, e.g. ``logits`` or ``loc``/``scale``, written by the collector), pi is
    ``actor``'s current one.

    The analytic KL where torch has one for the pair (Categorical: clamped at 0, since rounding
    can make the KL of identical distributions -1e-9), else the k3 estimate at the batch's own
    actions, which were sampled from pi_old (``action_log_prob``).
    """
    with torch.no_grad():
        old = actor.build_dist_from_params(batch)
        new = actor.get_dist(batch.select(*actor.in_keys))  # a view: batch stays as is
        try:
            kl = kl_divergence(old, new).clamp_min(0.0)
        except NotImplementedError:
            log_ratio = new.log_prob(batch["action"]) - batch["action_log_prob"]
            kl = k3(log_ratio)
        return kl.mean()

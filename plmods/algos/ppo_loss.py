"""torchrl's PPO losses, reporting the k3 estimate of KL(pi_old || pi) computed per element.

torchrl 0.14.1 logs ``kl_approx`` = mean(log pi_old - log pi) (k1, negative on many minibatches)
and ``mean_ratio``; k3 from those two means, ``mean_ratio - 1 + k1``, cancels to noise for small
updates (it returned -1.4e-9 for identical policies). These subclasses add ``approx_kl`` =
mean(expm1(d) - d), d = log pi - log pi_old, over the same elements the loss sees.

The per-element log-ratio is only available inside torchrl's ``_log_weight`` (a protected method
every PPO loss calls once per forward); overriding it is the one place plmods reaches into
torchrl's PPO losses, and ``tests/unit/test_torchrl_internals.py`` fails if its contract changes.
"""

from __future__ import annotations

import warnings

import torch
from tensordict import TensorDictBase
from torchrl.objectives import ClipPPOLoss, KLPENPPOLoss

from plmods.algos.kl import k3

__all__ = ["K3ClipPPOLoss", "K3KLPENPPOLoss"]


class _K3Mixin:
    """Adds ``approx_kl`` (k3 per element, then the mean) to a torchrl PPO loss's output."""

    reports_approx_kl = True

    def __init__(self, *args, entropy_bonus: bool | None = None, **kwargs) -> None:
        # entropy_bonus follows entropy_coeff unless given: one setting, not two that must agree
        if entropy_bonus is None:
            entropy_bonus = kwargs.get("entropy_coeff", 0.01) > 0  # 0.01: torchrl's default
        super().__init__(*args, entropy_bonus=entropy_bonus, **kwargs)

    def _log_weight(self, tensordict: TensorDictBase, adv_shape: torch.Size):
        out = super()._log_weight(tensordict, adv_shape)  # (log_weight, dist, kl_approx, log_is_weight)
        self._approx_kl = k3(out[0].detach()).mean()  # log_weight = log pi - log pi_old
        return out

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        out = super().forward(tensordict)
        out.set("approx_kl", self._approx_kl)
        return out


class K3ClipPPOLoss(_K3Mixin, ClipPPOLoss):
    """``ClipPPOLoss`` with ``approx_kl`` (k3) in its output."""


class K3KLPENPPOLoss(_K3Mixin, KLPENPPOLoss):
    """``KLPENPPOLoss`` with ``approx_kl`` (k3) in its output. Its penalty coefficient is
    ``kl_coef`` (beta; the name every plmods algorithm uses), torchrl's ``beta`` buffer."""

    def __init__(self, *args, kl_coef: float | None = None, **kwargs) -> None:
        if "beta" in kwargs:
            warnings.warn("K3KLPENPPOLoss(beta=...) is deprecated: use kl_coef.", DeprecationWarning, stacklevel=2)
            kl_coef = kwargs.pop("beta") if kl_coef is None else kl_coef
        super().__init__(*args, beta=1.0 if kl_coef is None else kl_coef, **kwargs)

"""Monte-Carlo advantages for REINFORCE: returns-to-go minus a baseline (seeds 001, 003).

    A_t = G_t - b_t,   G_t = sum_{k>=t} gamma^(k-t) r_k   (restarting at every episode end)

Baselines: ``none`` (b = 0), ``moving_average`` (a running mean of the batches' returns-to-go,
updated after use, so it never depends on the current batch's actions) and ``value``
(b_t = V(s_t), the critic, which the loss regresses on G_t).

``normalize_advantage`` divides the batch's advantages by their standard deviation and does not
re-centre them: centring is the baseline's job. (Standardising, as before 0.2, subtracted the
batch mean from every baseline's advantages, so ``none`` and ``moving_average`` gave identical
advantages and ``none`` was batch-mean centring, not b = 0.) torchrl's ``TD1Estimator`` gives the
``value`` case but bootstraps time-limit truncations and has no critic-free baselines; batches
here are whole episodes, so G_t is exact and one object covers all three.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.objectives.value.functional import reward2go

from plmods.errors import require

__all__ = ["BASELINES", "MonteCarloAdvantage", "returns_to_go"]

BASELINES = ("none", "moving_average", "value")


def returns_to_go(reward: torch.Tensor, done: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t for trajectories laid out ``[..., T, 1]`` (torchrl's ``reward2go``; ``done`` ends an
    episode, so concatenated episodes stay separate)."""
    return reward2go(reward, done, gamma, time_dim=-2)


class MonteCarloAdvantage(nn.Module):
    """Writes ``value_target`` = G_t and ``advantage`` = G_t - b_t into a batch of whole episodes
    laid out ``[N]`` along time (torchrl's ``traj_format="cat"``).

    Args:
        value_network: the critic V(s) (used by ``baseline="value"`` only; not registered here,
            so a module holding this object keeps one copy of the critic's parameters).
        gamma: discount of the returns-to-go.
        baseline: ``none``, ``moving_average`` or ``value``.
        baseline_decay: weight of the old value in the moving-average baseline.
        normalize_advantage: divide the batch's advantages by their std (no re-centring).

    ``uses_critic`` is False unless ``baseline="value"``: then no critic needs training.
    The moving average is a buffer, so checkpoints hold it.
    """

    def __init__(
        self,
        value_network: nn.Module,
        *,
        gamma: float = 0.99,
        baseline: str = "value",
        baseline_decay: float = 0.9,
        normalize_advantage: bool = True,
    ) -> None:
        super().__init__()
        require(0 < gamma <= 1, f"gamma must be in (0, 1], got {gamma}.")
        require(baseline in BASELINES, f"baseline must be one of {list(BASELINES)}, got {baseline!r}.")
        require(0 <= baseline_decay < 1, f"baseline_decay must be in [0, 1), got {baseline_decay}.")
        object.__setattr__(self, "value_network", value_network)
        self.gamma = gamma
        self.baseline = baseline
        self.baseline_decay = baseline_decay
        self.normalize_advantage = normalize_advantage
        self.uses_critic = baseline == "value"
        self.reduce_mean = None  # set by the module under DDP: a tensor's mean over ranks
        self.register_buffer("moving_baseline", torch.zeros(()))
        self.register_buffer("moving_baseline_initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def forward(self, steps: TensorDictBase) -> TensorDictBase:
        g = returns_to_go(steps["next", "reward"], steps["next", "done"], self.gamma)  # [N, 1]
        steps.set("value_target", g)
        if self.baseline == "value":
            advantage = g - self.value_network(steps.select("observation").clone())["state_value"]
        elif self.baseline == "moving_average":
            advantage = g - self.moving_baseline
            batch_mean = g.mean()
            # under DDP the mean over every rank's batch: every rank keeps the same baseline
            self._update_moving_baseline(self.reduce_mean(batch_mean) if self.reduce_mean is not None else batch_mean)
        else:
            advantage = g.clone()
        if self.normalize_advantage and advantage.numel() > 1:
            advantage = advantage / (advantage.std() + 1e-8)
        steps.set("advantage", advantage)
        return steps

    def _update_moving_baseline(self, batch_mean: torch.Tensor) -> None:
        """b <- decay * b + (1 - decay) * mean(G); the first batch sets b to its mean."""
        decay = self.baseline_decay if bool(self.moving_baseline_initialized) else 0.0
        self.moving_baseline.mul_(decay).add_((1 - decay) * batch_mean)
        self.moving_baseline_initialized.fill_(True)

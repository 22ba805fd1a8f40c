"""Actor and critic MLPs for control envs, built from the env's specs."""

from __future__ import annotations

import math

import torch
from tensordict.nn import AddStateIndependentNormalScale, TensorDictModule
from torch import nn
from torchrl.data import Categorical as CategoricalSpec
from torchrl.envs import EnvBase
from torchrl.modules import (
    MLP,
    ProbabilisticActor,
    TanhNormal,
    ValueOperator,
)

from plmods.errors import ConfigError

__all__ = ["MLPActorCritic"]

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU}


def _orthogonal_init(net: nn.Module, last_gain: float) -> None:
    """Orthogonal weights (gain sqrt 2), zero biases, small last layer: the PPO-paper init
    that cleanrl and SB3 use; it makes the initial policy near-uniform and speeds learning."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    for i, layer in enumerate(linears):
        gain = last_gain if i == len(linears) - 1 else math.sqrt(2)
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)


class MLPActorCritic:
    """Builds a torchrl ``ProbabilisticActor`` and ``ValueOperator`` for an env.

    Discrete actions get a categorical policy over logits; continuous actions a ``TanhNormal``
    bounded by the action spec with a state-independent log-scale.

    Args:
        hidden_sizes: widths of the hidden layers (actor and critic alike, no sharing).
        activation: one of ``tanh``, ``relu``, ``elu``, ``gelu``.
        orthogonal_init: orthogonal init with a 0.01-gain policy head and unit-gain value head.
    """

    def __init__(
        self,
        hidden_sizes: tuple[int, ...] | list[int] = (64, 64),
        activation: str = "tanh",
        orthogonal_init: bool = True,
    ) -> None:
        if activation not in _ACTIVATIONS:
            raise ConfigError(f"activation={activation!r} is not one of {sorted(_ACTIVATIONS)}.")
        if not hidden_sizes or any(int(h) < 1 for h in hidden_sizes):
            raise ConfigError(f"hidden_sizes must be positive ints, got {hidden_sizes}.")
        self.hidden_sizes = [int(h) for h in hidden_sizes]
        self.activation = activation
        self.orthogonal_init = orthogonal_init

    def _mlp(self, out_features: int) -> MLP:
        return MLP(
            out_features=out_features,
            num_cells=self.hidden_sizes,
            activation_class=_ACTIVATIONS[self.activation],
        )

    def build(self, env: EnvBase) -> tuple[ProbabilisticActor, ValueOperator]:
        obs_dim = env.observation_spec["observation"].shape[-1]
        action_spec = env.action_spec_unbatched
        dummy = torch.zeros(1, obs_dim)
        if isinstance(action_spec, CategoricalSpec):
            net = self._mlp(action_spec.space.n)
            net(dummy)  # materialise lazy layers before init
            if self.orthogonal_init:
                _orthogonal_init(net, 0.01)
            module = TensorDictModule(net, in_keys=["observation"], out_keys=["logits"])
            actor = ProbabilisticActor(
                module,
                in_keys=["logits"],
                distribution_class=torch.distributions.Categorical,
                return_log_prob=True,
                spec=action_spec,
            )
        else:
            act_dim = action_spec.shape[-1]
            net = self._mlp(act_dim)
            net(dummy)
            if self.orthogonal_init:
                _orthogonal_init(net, 0.01)
            loc_scale = nn.Sequential(net, AddStateIndependentNormalScale(act_dim, scale_lb=1e-4))
            module = TensorDictModule(loc_scale, in_keys=["observation"], out_keys=["loc", "scale"])
            actor = ProbabilisticActor(
                module,
                in_keys=["loc", "scale"],
                distribution_class=TanhNormal,
                distribution_kwargs={"low": action_spec.space.low, "high": action_spec.space.high},
                return_log_prob=True,
                spec=action_spec,
            )
        value_net = self._mlp(1)
        value_net(dummy)
        if self.orthogonal_init:
            _orthogonal_init(value_net, 1.0)
        critic = ValueOperator(value_net, in_keys=["observation"])
        return actor, critic

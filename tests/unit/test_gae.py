"""GAE as PPOModule uses it (torchrl ``GAE``), against hand-computed numbers.

Trajectory of 3 steps, observation s = [1, 2, 3], next observation s' = [2, 3, 4], V(s) = s,
rewards 1, gamma = lmbda = 0.5:  delta_t = r_t + gamma * V(s'_t) * (1 - terminated_t) - V(s_t)
and A_t = delta_t + gamma * lmbda * (1 - done_t) * A_{t+1}.
"""

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.modules import ValueOperator
from torchrl.objectives.value import GAE

from plmods.algos import PPOModule
from plmods.envs import ControlEnv


def _critic_identity() -> ValueOperator:
    layer = nn.Linear(1, 1)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.zero_()
    return ValueOperator(layer, in_keys=["observation"])


def _trajectory(terminated_at=None, truncated_at=None) -> TensorDict:
    T = 3
    terminated = torch.zeros(1, T, 1, dtype=torch.bool)
    truncated = torch.zeros(1, T, 1, dtype=torch.bool)
    if terminated_at is not None:
        terminated[0, terminated_at] = True
    if truncated_at is not None:
        truncated[0, truncated_at] = True
    return TensorDict(
        {
            "observation": torch.tensor([[[1.0], [2.0], [3.0]]]),
            "next": {
                "observation": torch.tensor([[[2.0], [3.0], [4.0]]]),
                "reward": torch.ones(1, T, 1),
                "terminated": terminated,
                "truncated": truncated,
                "done": terminated | truncated,
            },
        },
        batch_size=[1, T],
    )


@pytest.mark.parametrize(
    ("case", "kwargs", "advantage"),
    [
        # deltas 1.0, 0.5, 0.0; A2 = 0, A1 = 0.5, A0 = 1 + 0.25 * 0.5
        ("no episode end", {}, [1.125, 0.5, 0.0]),
        # termination at t=1: delta1 = 1 - 2 = -1 (no bootstrap) and the trace is cut
        ("terminated", {"terminated_at": 1}, [0.75, -1.0, 0.0]),
        # time-limit truncation at t=1: bootstrap V(s'_1) = 3 (delta1 = 0.5), trace cut
        ("truncated", {"truncated_at": 1}, [1.125, 0.5, 0.0]),
    ],
)
def test_gae_hand_computed(case, kwargs, advantage):
    gae = GAE(gamma=0.5, lmbda=0.5, value_network=_critic_identity())
    td = _trajectory(**kwargs)
    with torch.no_grad():
        gae(td)
    expected = torch.tensor(advantage).view(1, 3, 1)
    torch.testing.assert_close(td["advantage"], expected, atol=1e-6, rtol=0)
    # value target = advantage + V(s)
    torch.testing.assert_close(td["value_target"], expected + td["observation"], atol=1e-6, rtol=0)


def test_ppo_module_uses_gae_with_its_settings():
    module = PPOModule(
        ControlEnv("CartPole-v1", num_envs=4), frames_per_batch=64, minibatch_size=32, gamma=0.9, lmbda=0.7
    )
    assert isinstance(module.advantage_module, GAE)
    assert float(module.advantage_module.gamma) == pytest.approx(0.9)
    assert float(module.advantage_module.lmbda) == pytest.approx(0.7)
    # the estimator's critic is the module's critic: same parameter tensors, no copy
    critic_params = {p.data_ptr() for p in module.critic.parameters()}
    loss_params = {p.data_ptr() for p in module.loss_module.parameters()}
    assert critic_params <= loss_params

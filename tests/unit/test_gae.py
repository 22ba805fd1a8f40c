"""GAE as ControlModule.ppo uses it (torchrl ``GAE``), against hand-computed numbers at a real episode
cut: delta_t = r_t + gamma * V(s'_t) * (1 - terminated_t) - V(s_t) and
A_t = delta_t + gamma * lmbda * (1 - done_t) * A_{t+1}.
"""

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.modules import ValueOperator
from torchrl.objectives.value import GAE

from plmods.algos import ControlModule
from plmods.envs import ControlEnv


def _critic_identity() -> ValueOperator:
    layer = nn.Linear(1, 1)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.zero_()
    return ValueOperator(layer, in_keys=["observation"])


def _cut_trajectory(cut: str | None) -> TensorDict:
    """4 steps with an episode end after t = 1 (``cut``: terminated, truncated, or None for no
    end), the next episode starting from a reset observation:
    s = [1, 2, 5, 6], s' = [2, 3, 6, 7] (s'_1 = 3 is the true final observation, not s_2 = 5)."""
    T = 4
    end = torch.zeros(1, T, 1, dtype=torch.bool)
    if cut is not None:
        end[0, 1] = True
    terminated = end if cut == "terminated" else torch.zeros_like(end)
    truncated = end if cut == "truncated" else torch.zeros_like(end)
    return TensorDict(
        {
            "observation": torch.tensor([[[1.0], [2.0], [5.0], [6.0]]]),
            "next": {
                "observation": torch.tensor([[[2.0], [3.0], [6.0], [7.0]]]),
                "reward": torch.ones(1, T, 1),
                "terminated": terminated,
                "truncated": truncated,
                "done": terminated | truncated,
            },
        },
        batch_size=[1, T],
    )


# gamma = lmbda = 0.5, V(s) = s; deltas t2 = 1 + 0.5 * 6 - 5 = -1, t3 = 1 + 0.5 * 7 - 6 = -1.5,
# so A3 = -1.5 and A2 = -1 + 0.25 * (-1.5) = -1.375 in every case; t0: delta0 = 1 + 0.5 * 2 - 1 = 1.
@pytest.mark.parametrize(
    ("cut", "advantage"),
    [
        # terminated at t1: no bootstrap, delta1 = 1 - 2 = -1; trace cut: A1 = -1, A0 = 1 - 0.25
        ("terminated", [0.75, -1.0, -1.375, -1.5]),
        # truncated at t1: bootstrap from the true final V(s'_1) = 3, delta1 = 1 + 1.5 - 2 = 0.5;
        # trace cut: A1 = 0.5, A0 = 1 + 0.25 * 0.5
        ("truncated", [1.125, 0.5, -1.375, -1.5]),
        # no cut: A1 = 0.5 + 0.25 * (-1.375) = 0.15625, A0 = 1 + 0.25 * 0.15625
        (None, [1.0390625, 0.15625, -1.375, -1.5]),
    ],
)
def test_gae_at_a_real_episode_cut(cut, advantage):
    gae = GAE(gamma=0.5, lmbda=0.5, value_network=_critic_identity())
    td = _cut_trajectory(cut)
    with torch.no_grad():
        gae(td)
    expected = torch.tensor(advantage).view(1, 4, 1)
    torch.testing.assert_close(td["advantage"], expected, atol=1e-6, rtol=0)
    # value target = advantage + V(s)
    torch.testing.assert_close(td["value_target"], expected + td["observation"], atol=1e-6, rtol=0)


def test_ppo_module_uses_gae_with_its_settings():
    module = ControlModule.ppo(
        ControlEnv("CartPole-v1", num_envs=4), frames_per_batch=64, minibatch_size=32, gamma=0.9, lmbda=0.7
    )
    assert isinstance(module.advantage_module, GAE)
    assert float(module.advantage_module.gamma) == pytest.approx(0.9)
    assert float(module.advantage_module.lmbda) == pytest.approx(0.7)
    # the estimator's critic is the module's critic: same parameter tensors, no copy
    critic_params = {p.data_ptr() for p in module.critic.parameters()}
    loss_params = {p.data_ptr() for p in module.loss_module.parameters()}
    assert critic_params <= loss_params

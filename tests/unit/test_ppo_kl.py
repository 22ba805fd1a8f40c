"""PPO-penalty: the objective r * A - beta * KL by hand, and beta only changes where we decide."""

import math

import pytest
import torch
from tensordict import TensorDict

from plmods.algos import ControlModule
from plmods.envs import ControlEnv


@pytest.fixture
def module():
    torch.manual_seed(0)
    return ControlModule.ppo_kl(
        ControlEnv("CartPole-v1", num_envs=4), frames_per_batch=64, minibatch_size=32,
        kl_coef=0.5, normalize_advantage=False,
    )  # fmt: skip


def _batch(module, old_logits, advantages):
    """A batch whose behaviour policy had ``old_logits``; returns it and the current logits."""
    n = len(advantages)
    obs = torch.randn(n, 4)
    action = torch.tensor([0, 1] * (n // 2))
    with torch.no_grad():
        logits = module.actor.module[0](TensorDict({"observation": obs}, [n]))["logits"]
        value = module.critic(TensorDict({"observation": obs}, [n]))["state_value"]
    old_logits = torch.tensor(old_logits)
    old_log_prob = torch.distributions.Categorical(logits=old_logits).log_prob(action)
    td = TensorDict(
        {
            "observation": obs,
            "action": action,
            "logits": old_logits,  # KLPENPPOLoss rebuilds pi_old from the stored distribution params
            "action_log_prob": old_log_prob,
            "advantage": torch.tensor(advantages).unsqueeze(-1),
            "value_target": value,
        },
        [n],
    )
    return td, logits, old_log_prob, action


def test_penalty_objective_hand_computed(module):
    td, logits, old_log_prob, action = _batch(
        module, [[0.0, 0.0], [1.0, -1.0], [0.5, 0.5], [-2.0, 1.0]], [1.0, -0.5, 2.0, 0.25]
    )
    out = module.loss_module(td).detach()
    new = torch.distributions.Categorical(logits=logits)
    old = torch.distributions.Categorical(logits=td["logits"])
    ratio = (new.log_prob(action) - old_log_prob).exp()
    # KL(pi_old || pi_new) = sum_a p_old(a) (log p_old(a) - log p_new(a))
    p_old = old.probs
    kl = (p_old * (p_old.log() - new.probs.log())).sum(-1)
    expected = -(ratio * torch.tensor([1.0, -0.5, 2.0, 0.25]) - 0.5 * kl).mean()
    assert float(out["loss_objective"]) == pytest.approx(float(expected), abs=1e-6)
    torch.testing.assert_close(out["kl"].squeeze(-1), kl, atol=1e-6, rtol=0)


def test_torchrl_beta_rule_is_switched_off(module):
    # a KL far above torchrl's dtarg (0.01 * 1.5) would double beta if its rule were active
    td, *_ = _batch(module, [[5.0, -5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, 5.0]], [1.0, 1.0, 1.0, 1.0])
    for _ in range(3):
        out = module.loss_module(td)
    assert float(out["kl"].mean()) > 0.1
    assert module.kl_coef == 0.5
    # and far below it would halve beta
    td2, logits, *_ = _batch(module, [[0.0, 0.0]] * 4, [1.0] * 4)
    td2["logits"] = logits
    module.loss_module(td2)
    assert module.kl_coef == 0.5


def test_kl_coef_writes_the_loss_buffer_and_is_checkpointed(module):
    module.kl_coef = 0.125
    assert float(module.loss_module.beta) == 0.125
    assert module.state_dict()["loss_module.beta"].item() == 0.125
    assert math.isclose(module.kl_coef, 0.125)

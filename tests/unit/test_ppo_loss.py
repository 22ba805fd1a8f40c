"""PPO loss plumbing: the module's torchrl ClipPPOLoss against the paper's formulas, by hand.

ratio = exp(log pi_new - log pi_old); gain = min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A);
loss_objective = -mean(gain); loss_critic = critic_coeff * mean((V - V_target)^2) (l2);
loss_entropy = -entropy_coeff * mean(H).
"""

import math

import pytest
import torch
from tensordict import TensorDict

from plmods.algos import ControlModule
from plmods.envs import ControlEnv


@pytest.fixture
def module():
    torch.manual_seed(0)
    return ControlModule.ppo(
        ControlEnv("CartPole-v1", num_envs=4),
        frames_per_batch=64,
        minibatch_size=32,
        clip_epsilon=0.2,
        normalize_advantage=False,
        entropy_coeff=0.01,
        critic_coeff=0.5,
        loss_critic_type="l2",
    )


def _batch(module, ratios, advantages, value_offsets):
    n = len(ratios)
    obs = torch.randn(n, 4)
    action = torch.tensor([0, 1] * (n // 2))
    with torch.no_grad():
        logits = module.actor.module[0](TensorDict({"observation": obs}, [n]))["logits"]
        new_log_prob = torch.distributions.Categorical(logits=logits).log_prob(action)
        value = module.critic(TensorDict({"observation": obs}, [n]))["state_value"]
    old_log_prob = new_log_prob - torch.log(torch.tensor(ratios))
    td = TensorDict(
        {
            "observation": obs,
            "action": action,
            "action_log_prob": old_log_prob,
            "advantage": torch.tensor(advantages).unsqueeze(-1),
            "value_target": value + torch.tensor(value_offsets).unsqueeze(-1),
        },
        [n],
    )
    return td, logits


def test_clip_objective_critic_and_entropy_hand_computed(module):
    ratios = [0.5, 1.5, 0.5, 1.5]
    advantages = [1.0, 1.0, -1.0, -1.0]
    # gains: min(0.5, 0.8) = 0.5; min(1.5, 1.2) = 1.2; min(-0.5, -0.8) = -0.8; min(-1.5, -1.2) = -1.5
    expected_objective = -(0.5 + 1.2 - 0.8 - 1.5) / 4  # = 0.15
    td, logits = _batch(module, ratios, advantages, value_offsets=[1.0, -1.0, 2.0, 0.0])
    out = module.loss_module(td).detach()
    assert float(out["loss_objective"]) == pytest.approx(expected_objective, abs=1e-5)
    # every ratio lies outside [0.8, 1.2]
    assert float(out["clip_fraction"]) == pytest.approx(1.0)
    # 0.5 * mean([1, 1, 4, 0])
    assert float(out["loss_critic"]) == pytest.approx(0.75, abs=1e-5)
    probs = logits.softmax(-1)
    entropy = -(probs * probs.log()).sum(-1).mean()
    assert float(out["loss_entropy"]) == pytest.approx(-0.01 * float(entropy), abs=1e-6)
    # approx_kl (torchrl's k1 estimator): mean(log pi_old - log pi_new) = -mean(log ratio)
    assert float(out["kl_approx"]) == pytest.approx(-sum(math.log(r) for r in ratios) / 4, abs=1e-5)


def test_unclipped_ratios_give_plain_surrogate(module):
    ratios = [0.9, 1.1, 1.0, 1.05]
    advantages = [2.0, -1.0, 0.5, 1.0]
    td, _ = _batch(module, ratios, advantages, value_offsets=[0.0] * 4)
    out = module.loss_module(td).detach()
    expected = -sum(r * a for r, a in zip(ratios, advantages, strict=True)) / 4
    assert float(out["loss_objective"]) == pytest.approx(expected, abs=1e-5)
    assert float(out["clip_fraction"]) == 0.0
    assert float(out["loss_critic"]) == pytest.approx(0.0, abs=1e-10)


def test_total_loss_sums_loss_terms_only(module):
    out = TensorDict(
        {
            "loss_objective": torch.tensor(0.25),
            "loss_critic": torch.tensor(1.5),
            "loss_entropy": torch.tensor(-0.125),
            "clip_fraction": torch.tensor(7.0),
        },
        [],
    )
    assert float(module.total_loss(out)) == pytest.approx(1.625)


def test_non_finite_loss_raises_before_the_step(module):
    out = TensorDict({"loss_objective": torch.tensor(float("nan")), "loss_critic": torch.tensor(1.0)}, [])
    with pytest.raises(FloatingPointError, match="loss_objective"):
        module.total_loss(out)


def test_approx_kl_is_k3_per_element(module):
    ratios = [0.5, 1.5, 0.25, 1.5]
    td, _ = _batch(module, ratios, [1.0, 1.0, -1.0, -1.0], value_offsets=[0.0] * 4)
    out = module.loss_module(td).detach()
    # mean((r - 1) - log r) = (0.193147 + 0.094535 + 0.636294 + 0.094535) / 4
    expected = sum((r - 1) - math.log(r) for r in ratios) / 4
    assert expected == pytest.approx(0.2546278, abs=1e-7)
    assert float(out["approx_kl"]) == pytest.approx(expected, abs=1e-6)


def test_approx_kl_of_identical_policies_is_exactly_zero(module):
    # ratio 1 everywhere: k3 = expm1(0) - 0 = 0 exactly (the cancelling form gave -1.4e-9)
    td, _ = _batch(module, [1.0] * 8, [1.0, -1.0] * 4, value_offsets=[0.0] * 8)
    assert float(module.loss_module(td)["approx_kl"]) == 0.0


def test_k3_losses_add_the_entropy_term_when_its_weight_is_positive(module):
    from plmods.algos.ppo_loss import K3ClipPPOLoss, K3KLPENPPOLoss

    for loss_type in (K3ClipPPOLoss, K3KLPENPPOLoss):
        assert loss_type(module.actor, module.critic).entropy_bonus is True  # torchrl's entropy_coeff 0.01
        assert loss_type(module.actor, module.critic, entropy_coeff=0.0).entropy_bonus is False
        assert loss_type(module.actor, module.critic, entropy_coeff=0.0, entropy_bonus=True).entropy_bonus is True

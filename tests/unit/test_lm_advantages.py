"""The language algorithms' new math against hand-computed numbers: per-token KL rewards, token
GAE with a terminal reward (PPO), returns-to-go minus the leave-one-out / moving-average / no
baseline (REINFORCE), and the clipped value loss (seed 003's critic)."""

import math

import pytest
import torch
from tensordict import TensorDict

from plmods.algos.ppo_lm import clipped_value_loss
from plmods.errors import ConfigError
from plmods.rollout.kl_reward import kl_penalty_rewards, terminal_rewards
from plmods.rollout.token_gae import TokenGAE, whiten
from plmods.rollout.token_returns import TokenMonteCarloAdvantage, leave_one_out

# two completions of one prompt: row 0 has 3 response tokens, row 1 has 2 (and one pad)
MASK = torch.tensor([[True, True, True], [True, True, False]])
OLD = torch.tensor([[-1.0, -0.5, -0.2], [-0.3, -0.6, -7.0]])
REF = torch.tensor([[-1.2, -0.4, -0.2], [-0.5, -0.6, -9.0]])
# k1 = old - ref = [0.2, -0.1, 0.0 | 0.2, 0.0]; with beta = 0.1 the rewards are -0.1 * k1
KL_REWARD = [[-0.02, 0.01, 0.0], [-0.02, 0.0, 0.0]]


def test_kl_penalty_rewards_are_minus_beta_k1_on_valid_tokens():
    torch.testing.assert_close(kl_penalty_rewards(OLD, REF, MASK, 0.1), torch.tensor(KL_REWARD), rtol=0, atol=1e-7)


def test_the_sequence_reward_sits_on_the_last_valid_token():
    out = terminal_rewards(torch.tensor([1.0, -2.0]), MASK)
    assert out.tolist() == [[0.0, 0.0, 1.0], [0.0, -2.0, 0.0]]


def _gae_batch():
    values = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.4, 9.9]])  # the pad's 9.9 must not leak
    return TensorDict(response_mask=MASK, old_values=values, kl_reward=torch.tensor(KL_REWARD), batch_size=[2])


# gamma = 1, lambda = 0.5; r = [-0.02, 0.01, 1.0 | -0.02, 0.0]
# row 0: delta = [-0.02 + 0.2 - 0.5, 0.01 + 0.1 - 0.2, 1.0 - 0.1] = [-0.32, -0.09, 0.9]
#        A2 = 0.9, A1 = -0.09 + 0.45 = 0.36, A0 = -0.32 + 0.18 = -0.14;  R = A + V = [0.36, 0.56, 1.0]
# row 1: delta = [-0.02 + 0.4 - 0.3, 0.0 - 0.4] = [0.08, -0.4];  A = [-0.12, -0.4];  R = [0.18, 0.0]
RAW_A = [[-0.14, 0.36, 0.9], [-0.12, -0.4, 0.0]]
RETURNS = [[0.36, 0.56, 1.0], [0.18, 0.0, 0.0]]


def test_token_gae_with_kl_rewards_and_a_terminal_reward():
    batch = _gae_batch()
    advantage = TokenGAE(gamma=1.0, lmbda=0.5, whiten=False)(rewards=torch.tensor([[1.0, 0.0]]), batch=batch)
    assert advantage.shape == (1, 2, 3)
    torch.testing.assert_close(advantage.view(2, 3), torch.tensor(RAW_A), rtol=0, atol=1e-6)
    torch.testing.assert_close(batch["value_target"], torch.tensor(RETURNS), rtol=0, atol=1e-6)


def test_token_gae_whitens_over_response_tokens_and_keeps_raw_returns():
    batch = _gae_batch()
    advantage = TokenGAE(gamma=1.0, lmbda=0.5)(rewards=torch.tensor([[1.0, 0.0]]), batch=batch).view(2, 3)
    # the 5 valid advantages: mean 0.12, unbiased std sqrt(1.0616 / 4)
    std = math.sqrt(1.0616 / 4)
    expected = [[(a - 0.12) / std for a in row] for row in RAW_A]
    expected[1][2] = 0.0  # padding stays 0
    torch.testing.assert_close(advantage, torch.tensor(expected), rtol=0, atol=1e-5)
    torch.testing.assert_close(batch["value_target"], torch.tensor(RETURNS), rtol=0, atol=1e-6)


def test_token_gae_discounts_with_gamma():
    batch = _gae_batch()
    batch["old_values"] = torch.zeros(2, 3)
    batch["kl_reward"] = torch.zeros(2, 3)
    advantage = TokenGAE(gamma=0.5, lmbda=1.0, whiten=False)(rewards=torch.tensor([[1.0, 2.0]]), batch=batch).view(2, 3)
    # V = 0: A_t = gamma^(last - t) R
    torch.testing.assert_close(advantage, torch.tensor([[0.25, 0.5, 1.0], [1.0, 2.0, 0.0]]), rtol=0, atol=1e-7)


def test_whiten_of_one_element_only_centres():
    out = whiten(torch.tensor([[3.0, 7.0]]), torch.tensor([[True, False]]))
    assert out.tolist() == [[0.0, 0.0]]


# --- REINFORCE -------------------------------------------------------------------------------------


def _returns_batch(mask, kl=None):
    fields = {"response_mask": mask}
    if kl is not None:
        fields["kl_reward"] = kl
    return TensorDict(fields, batch_size=[mask.shape[0]])


def test_leave_one_out_is_the_reward_minus_the_mean_of_the_others():
    rewards = torch.tensor([[1.0, 0.0, 0.0], [0.1, 0.1, 0.1]])
    out = leave_one_out(rewards)
    # b_0 = (0 + 0) / 2, b_1 = b_2 = (1 + 0) / 2; a group of equal rewards: exactly 0
    torch.testing.assert_close(out[0], torch.tensor([1.0, -0.5, -0.5]), rtol=0, atol=1e-7)
    assert torch.equal(out[1], torch.zeros(3))


@pytest.mark.parametrize("values", [[0.1] * 3, [0.1] * 6, [1 / 3] * 7, [0.7] * 5])
def test_a_uniform_group_gets_exactly_zero_even_where_the_float_mean_is_not_its_value(values):
    rewards = torch.tensor([values])
    assert torch.equal(leave_one_out(rewards), torch.zeros_like(rewards))
    mask = torch.ones(len(values), 2, dtype=torch.bool)
    advantage = TokenMonteCarloAdvantage()(rewards=rewards, batch=_returns_batch(mask))
    assert torch.equal(advantage, torch.zeros_like(advantage))


def test_returns_to_go_carry_the_kl_still_ahead_and_the_baseline_uses_the_other_returns():
    mask = torch.tensor([[True, True], [True, False]])
    kl = torch.tensor([[-0.1, -0.2], [-0.5, 0.0]])
    advantage = TokenMonteCarloAdvantage("leave_one_out")(rewards=torch.tensor([[1.0, 0.0]]), batch=_returns_batch(mask, kl))
    # G row 0 = [1 - 0.3, 1 - 0.2] = [0.7, 0.8]; G row 1 = [-0.5]; b_0 = -0.5, b_1 = 0.7
    torch.testing.assert_close(advantage.view(2, 2), torch.tensor([[1.2, 1.3], [-1.2, 0.0]]), rtol=0, atol=1e-6)


def test_no_baseline_is_the_return_and_gamma_discounts_it():
    mask = torch.ones(2, 3, dtype=torch.bool)
    out = TokenMonteCarloAdvantage("none", gamma=0.5)(rewards=torch.tensor([[2.0, -1.0]]), batch=_returns_batch(mask))
    torch.testing.assert_close(out.view(2, 3), torch.tensor([[0.5, 1.0, 2.0], [-0.25, -0.5, -1.0]]), rtol=0, atol=1e-7)


def test_moving_average_baseline_uses_earlier_batches_only():
    advantage = TokenMonteCarloAdvantage("moving_average", baseline_decay=0.9)
    mask = torch.ones(2, 1, dtype=torch.bool)
    first = advantage(rewards=torch.tensor([[1.0, 3.0]]), batch=_returns_batch(mask))
    assert first.view(-1).tolist() == [1.0, 3.0]  # no history yet: b = 0, then b = 2
    assert float(advantage.moving_baseline) == 2.0
    second = advantage(rewards=torch.tensor([[0.0, 4.0]]), batch=_returns_batch(mask))
    assert second.view(-1).tolist() == [-2.0, 2.0]
    assert float(advantage.moving_baseline) == pytest.approx(0.9 * 2.0 + 0.1 * 2.0)
    advantage(rewards=torch.tensor([[5.0, 5.0]]), batch=_returns_batch(mask), mean_over_ranks=lambda v: v * 0 + 10.0)
    assert float(advantage.moving_baseline) == pytest.approx(0.9 * 2.0 + 0.1 * 10.0)  # the ranks' mean


def test_normalisation_scales_without_recentring():
    mask = torch.ones(2, 1, dtype=torch.bool)
    out = TokenMonteCarloAdvantage("none", normalize_advantage=True)(rewards=torch.tensor([[1.0, 3.0]]), batch=_returns_batch(mask))
    std = math.sqrt(2.0)  # of [1, 3]
    torch.testing.assert_close(out.view(-1), torch.tensor([1 / std, 3 / std]), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("kwargs", "message"), [({"baseline": "mean"}, "baseline must be one of none, moving_average, leave_one_out"),
                                                  ({"gamma": 0.0}, "gamma must be in (0, 1]"),
                                                  ({"baseline_decay": 1.0}, "baseline_decay must be in [0, 1)")])  # fmt: skip
def test_bad_reinforce_settings_name_the_setting(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        TokenMonteCarloAdvantage(**kwargs)


def test_bad_gae_settings_name_the_setting():
    with pytest.raises(ConfigError, match=r"lmbda must be in \[0, 1\]"):
        TokenGAE(lmbda=1.5)


# --- the critic's loss -----------------------------------------------------------------------------

# V = [1.0, 0.9, 0.5], V_old = 0.5, R = [0.0, 1.0, 0.6], eps_v = 0.2
# t0: (1.0 - 0)^2 = 1 vs (0.7 - 0)^2 = 0.49 -> 0.5;   t1: (0.9 - 1)^2 = 0.01 vs (0.7 - 1)^2 = 0.09 -> 0.045 (clipped)
# t2: (0.5 - 0.6)^2 = 0.01 both -> 0.005


def test_clipped_value_loss_hand_computed_with_its_gradient():
    values = torch.tensor([1.0, 0.9, 0.5], requires_grad=True)
    loss, clipped = clipped_value_loss(values, torch.full((3,), 0.5), torch.tensor([0.0, 1.0, 0.6]), 0.2)
    torch.testing.assert_close(loss.detach(), torch.tensor([0.5, 0.045, 0.005]), rtol=0, atol=1e-6)
    assert clipped.tolist() == [False, True, False]
    loss.sum().backward()
    # d/dV: V - R where the unclipped term wins; 0 where the clip binds and its term wins
    torch.testing.assert_close(values.grad, torch.tensor([1.0, 0.0, -0.1]), rtol=0, atol=1e-6)


def test_an_unclipped_value_loss_is_half_the_squared_error():
    loss, clipped = clipped_value_loss(torch.tensor([1.0, 0.9]), torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0]), None)
    torch.testing.assert_close(loss, torch.tensor([0.5, 0.005]), rtol=0, atol=1e-7)
    assert clipped.dtype == torch.bool and not clipped.any()


def test_the_value_clip_binds_below_as_above_and_not_inside():
    values = torch.tensor([0.1, 0.6], requires_grad=True)
    loss, clipped = clipped_value_loss(values, torch.tensor([0.5, 0.5]), torch.tensor([-0.5, 0.0]), 0.2)
    # token 0: V - V_old = -0.4 -> clipped to -0.2: V_clip = 0.3; (0.3 + 0.5)^2 = 0.64 > (0.1 + 0.5)^2 = 0.36
    # token 1: V - V_old = 0.1, inside the clip: both terms (0.6)^2 = 0.36
    torch.testing.assert_close(loss.detach(), torch.tensor([0.32, 0.18]), rtol=0, atol=1e-6)
    assert clipped.tolist() == [True, False]
    loss.sum().backward()
    torch.testing.assert_close(values.grad, torch.tensor([0.0, 0.6]), rtol=0, atol=1e-6)


def _two_steps(prompts, completions, **fields):
    """Step rewards by character: a step ends at each ';' (its end is the character after it)."""
    return [[(i + 1, 0.5 if part else -0.5) for i, ch in enumerate(c) if ch == ";" for part in [c[:i].endswith("ok")]]
            for c in completions]  # fmt: skip


def test_step_rewards_sit_on_the_token_that_completes_each_step():
    from plmods.models.lm import char_tokenizer

    tok = char_tokenizer()
    completions = ["ok;x;", "no;"]  # one character per token
    rows = [tok(c, add_special_tokens=False)["input_ids"] for c in completions]
    T = 5
    tokens = torch.tensor([r + [tok.pad_token_id] * (T - len(r)) for r in rows])
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    batch = TensorDict(response_mask=mask, response_tokens=tokens, batch_size=[2])
    advantage = TokenMonteCarloAdvantage("none", step_rewards=_two_steps)(
        rewards=torch.tensor([[1.0, 0.0]]), batch=batch, problems=[{"prompt": "p", "answer": 1}] * 2,
        completions=completions, tokenizer=tok,
    )  # fmt: skip
    # row 0: r = [0, 0, +0.5 (step "ok;"), 0, -0.5 (step "x;") + 1 (sequence)] -> G = [1, 1, 1, 0.5, 0.5]
    # row 1: r = [0, 0, -0.5 (step "no;") + 0] -> G = [-0.5, -0.5, -0.5, 0, 0]
    expected = torch.tensor([[1.0, 1.0, 1.0, 0.5, 0.5], [-0.5, -0.5, -0.5, 0.0, 0.0]])
    torch.testing.assert_close(advantage.view(2, T), expected, rtol=0, atol=1e-7)


def test_explained_variance_over_response_tokens_hand_computed():
    from plmods.rollout.token_gae import explained_variance

    mask = torch.tensor([[True, True], [True, False]])
    batch = TensorDict(
        response_mask=mask, value_target=torch.tensor([[1.0, 2.0], [3.0, 50.0]]),
        old_values=torch.tensor([[0.5, 2.0], [2.5, -9.0]]), batch_size=[2],
    )  # fmt: skip
    out = explained_variance(batch)
    # R = [1, 2, 3]: unbiased Var 1; R - V = [0.5, 0, 0.5]: Var ((1/6)^2 + (1/3)^2 + (1/6)^2) / 2 = 1/12
    assert float(out["explained_variance"]) == pytest.approx(1 - 1 / 12, abs=1e-6)
    assert float(out["value_mean"]) == pytest.approx(5 / 3, abs=1e-6)
    batch["value_target"] = torch.full((2, 2), 4.0)  # constant returns: undefined
    assert math.isnan(float(explained_variance(batch)["explained_variance"]))
    assert explained_variance(TensorDict(response_mask=mask, batch_size=[2])) == {}

"""Group-relative advantages (seed 003) against hand-computed numbers."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from plmods.rollout.group_advantage import GroupRelativeAdvantage

EPS = 1e-4


def test_outcome_advantage_is_group_standardised():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    adv = GroupRelativeAdvantage(eps=EPS).outcome(rewards)
    # group 0: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = sqrt(1/3)
    a0 = 0.5 / (math.sqrt(1 / 3) + EPS)
    # group 1: mean 0.25, unbiased std sqrt((3 * 0.0625 + 0.5625) / 3) = 0.5
    expected = torch.tensor([[a0, -a0, -a0, a0], [-0.25 / (0.5 + EPS)] * 2 + [0.75 / (0.5 + EPS), -0.25 / (0.5 + EPS)]])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)


def test_outcome_population_std_and_centring_only():
    rewards = torch.tensor([[2.0, 0.0]])
    population = GroupRelativeAdvantage(eps=EPS, unbiased_std=False).outcome(rewards)
    torch.testing.assert_close(population, torch.tensor([[1 / (1 + EPS), -1 / (1 + EPS)]]), rtol=0, atol=1e-6)
    centred = GroupRelativeAdvantage(std_normalize=False).outcome(rewards)
    torch.testing.assert_close(centred, torch.tensor([[1.0, -1.0]]), rtol=0, atol=0)


def test_outcome_all_equal_group_has_zero_advantage():
    adv = GroupRelativeAdvantage().outcome(torch.ones(1, 5))
    assert torch.equal(adv, torch.zeros(1, 5))


def test_process_advantage_sums_normalised_rewards_of_later_steps():
    # one group of two completions; steps as (index of the step's last token, reward)
    steps = [[[(1, 1.0), (3, 0.0)], [(2, 1.0)]]]
    adv = GroupRelativeAdvantage(eps=EPS).process(steps, num_tokens=5)
    # R = {1, 0, 1}: mean 2/3, unbiased std sqrt(((1/3)^2 * 2 + (2/3)^2) / 2) = sqrt(1/3)
    std = math.sqrt(1 / 3) + EPS
    hi, lo = (1 - 2 / 3) / std, (0 - 2 / 3) / std
    expected = torch.tensor(
        [
            [[hi + lo, hi + lo, lo, lo, 0.0], [hi, hi, hi, 0.0, 0.0]],
        ]
    )
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)


def test_process_advantage_without_steps_is_zero():
    adv = GroupRelativeAdvantage().process([[[], []]], num_tokens=3)
    assert torch.equal(adv, torch.zeros(1, 2, 3))


@pytest.mark.parametrize("ind", [7, 100])
def test_process_step_beyond_the_completion_covers_all_tokens(ind):
    adv = GroupRelativeAdvantage(std_normalize=False).process([[[(ind, 1.0)], [(0, 0.0)]]], num_tokens=4)
    torch.testing.assert_close(adv[0, 0], torch.full((4,), 0.5))
    torch.testing.assert_close(adv[0, 1], torch.tensor([-0.5, 0.0, 0.0, 0.0]))


# ---- edge cases found by mutation testing ----
def test_outcome_default_eps_is_1e_4():
    # mean 1, unbiased std sqrt(2): 1 / (sqrt(2) + 1e-4) = 0.7070567847
    adv = GroupRelativeAdvantage().outcome(torch.tensor([[2.0, 0.0]]))
    torch.testing.assert_close(adv, torch.tensor([[0.7070567847, -0.7070567847]]), rtol=0, atol=1e-6)


def test_process_group_of_two_steps_is_standardised():
    # R = {1, 0}: mean 0.5, unbiased std sqrt(0.5): +-0.5 / (sqrt(0.5) + 1e-4) = +-0.7070067953
    adv = GroupRelativeAdvantage(eps=1e-4).process([[[(0, 1.0)], [(0, 0.0)]]], num_tokens=1)
    torch.testing.assert_close(adv, torch.tensor([[[0.7070067953], [-0.7070067953]]]), rtol=0, atol=1e-6)


def test_process_group_of_one_step_is_zero_not_nan():
    # one step in the whole group: centred reward 0, std taken as 0 (not the nan of std of one value)
    adv = GroupRelativeAdvantage(eps=1e-4).process([[[(1, 2.0)], []]], num_tokens=3)
    assert torch.equal(adv, torch.zeros(1, 2, 3))


def test_process_prompt_without_steps_does_not_stop_the_later_prompts():
    adv = GroupRelativeAdvantage(std_normalize=False).process(
        [[[], []], [[(0, 1.0)], [(0, 0.0)]]], num_tokens=2
    )
    torch.testing.assert_close(adv, torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[0.5, 0.0], [-0.5, 0.0]]]))


# ---- properties (hypothesis) ----

_REWARDS = st.lists(
    st.lists(st.floats(min_value=-10, max_value=10, allow_nan=False, allow_subnormal=False, width=32), min_size=2, max_size=8),
    min_size=1,
    max_size=4,
).filter(lambda groups: len({len(g) for g in groups}) == 1)


@settings(deadline=None, max_examples=60)
@given(_REWARDS)
def test_outcome_advantages_are_centred_and_zero_for_uniform_groups(groups):
    rewards = torch.tensor(groups, dtype=torch.float32)  # [B, G]
    adv = GroupRelativeAdvantage().outcome(rewards)
    torch.testing.assert_close(adv.mean(-1), torch.zeros(len(groups)), atol=1e-3, rtol=0)
    uniform = (rewards.max(-1).values - rewards.min(-1).values) == 0
    assert (adv[uniform] == 0).all()
    # order is kept: a better reward never gets a smaller advantage within its group
    for b in range(len(groups)):
        order = rewards[b].argsort()
        assert (adv[b][order].diff() >= -1e-6).all()


def test_outcome_a_group_symmetric_about_zero_is_not_uniform():
    # rewards -1 and +1: max + min is 0, max - min is 2; only max - min == 0 means "uniform"
    rewards = torch.tensor([[-1.0, 1.0], [0.1, 0.1]])
    adv = GroupRelativeAdvantage(eps=EPS).outcome(rewards)
    a = 1.0 / (math.sqrt(2.0) + EPS)  # mean 0, unbiased std sqrt(2)
    assert torch.allclose(adv[0], torch.tensor([-a, a]), atol=1e-7, rtol=0)
    assert adv[1].tolist() == [0.0, 0.0]  # exactly, though mean([0.1, 0.1]) - 0.1 need not be 0

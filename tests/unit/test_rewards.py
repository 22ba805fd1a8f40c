"""Reward functions, table-driven (as TRL's tests/test_rewards.py)."""

import pytest
import torch

from plmods.errors import ConfigError
from plmods.rewards import (
    RewardFunctions,
    countdown_answer,
    countdown_steps,
    exact_match,
    integer_format,
    resolve_callable,
)


@pytest.mark.parametrize(
    "completion, answer, expected",
    [("46", "46", 1.0), (" 46 ", "46", 1.0), ("47", "46", 0.0), ("46 7", "46", 0.0), ("", "46", 0.0), ("046", "46", 0.0)],
)
def test_exact_match(completion, answer, expected):
    assert exact_match(["p"], [completion], answer=[answer]) == [expected]


@pytest.mark.parametrize("completion, expected", [("12", 1.0), ("-3", 1.0), ("1 2", 0.0), ("x", 0.0), ("", 0.0)])
def test_integer_format(completion, expected):
    assert integer_format(["p"], [completion]) == [expected]


@pytest.mark.parametrize(
    "completion, numbers, target, expected",
    [
        ("7*3=21\n21+5=26", [3, 7, 5], 26, 1.0),  # correct
        ("7*3=21", [3, 7, 5], 26, 0.1),  # valid steps, target missed
        ("7*3=22", [3, 7, 5], 21, 0.0),  # wrong arithmetic
        ("7*7=49", [3, 7, 5], 49, 0.0),  # 7 used twice
        ("7", [3, 7, 5], 7, 1.0),  # a bare available number
        ("8", [3, 7, 5], 8, 0.0),  # not available
        ("7*3=21\n21+21=42", [3, 7, 5], 42, 0.0),  # 21 used twice
        ("", [3, 7, 5], 26, 0.0),
    ],
)
def test_countdown_answer(completion, numbers, target, expected):
    assert countdown_answer(["p"], [completion], numbers=[numbers], target=[target]) == [expected]


@pytest.mark.parametrize(
    "completion, target, expected",
    [
        ("7*3=21\n21+5=26", 26, [(6, 1.0), (14, 2.0)]),  # both valid, the last reaches the target
        ("7*3=21\n21+5=27", 26, [(6, 1.0), (14, 0.0)]),  # second step wrong
        ("7*3=20\n20+5=25", 25, [(6, 0.0), (14, 0.0)]),  # an invalid step poisons the rest
        ("7*3=21", 26, [(6, 0.0)]),  # on a path to 26 (21 + 5) but stopped short: a dead end
        ("7+3=10\n10+5=15", 26, [(6, 0.0), (14, 0.0)]),  # valid, but 26 is out of reach of {10, 5}
        ("7*3=21\n21+5=26\n26", 26, [(6, 1.0), (14, 2.0), (17, 2.0)]),  # a bare 26 restates it
    ],
)
def test_countdown_steps(completion, target, expected):
    assert countdown_steps(["p"], [completion], numbers=[[3, 7, 5]], target=[target]) == [expected]


def test_reward_functions_weighted_sum_keeps_terms():
    fns = RewardFunctions(
        {"correct": "plmods.rewards.exact_match", "format": {"fn": "plmods.rewards.integer_format", "weight": 0.5}}
    )
    total, terms = fns(["p", "p", "p"], ["46", "47", "x"], {"answer": ["46", "46", "46"]})
    torch.testing.assert_close(total, torch.tensor([1.5, 0.5, 0.0]))
    torch.testing.assert_close(terms["correct"], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(terms["format"], torch.tensor([1.0, 1.0, 0.0]))


def test_reward_functions_accept_callables():
    fns = RewardFunctions({"length": lambda prompts, completions, **_: [float(len(c)) for c in completions]})
    total, _ = fns(["a", "b"], ["xy", "z"], {})
    torch.testing.assert_close(total, torch.tensor([2.0, 1.0]))


@pytest.mark.parametrize(
    "spec, message",
    [
        ({}, "algo.rewards is empty"),
        ({"x": "plmods.rewards.nope"}, "algo.rewards.x='plmods.rewards.nope' is not an importable callable"),
        ({"x": "nodots"}, "is not an importable callable"),
        ({"x": {"weight": 1.0}}, "algo.rewards.x must be a dotted path or"),
    ],
)
def test_bad_reward_specs_name_the_setting(spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        RewardFunctions(spec)


def test_reward_returning_wrong_count_raises():
    fns = RewardFunctions({"bad": lambda prompts, completions, **_: [1.0]})
    with pytest.raises(ValueError, match="returned"):
        fns(["a", "b"], ["x", "y"], {})


def test_resolve_callable_rejects_non_callables():
    with pytest.raises(ConfigError, match="is not callable"):
        resolve_callable("plmods.rewards.__all__", "algo.process_reward")


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("The answer is \\boxed{12}.", "12", 1.0),
        ("so 5+7 = 12", "12", 1.0),
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("0.5", "1/2", 1.0),
        ("x = 3, so 3.0", "3", 1.0),
        ("$\\boxed{13}$", "12", 0.0),
        ("I think 13", "12", 0.0),
        ("", "12", 0.0),
        ("no number here", "7", 0.0),
    ],
)
def test_math_answer_uses_math_verify(completion, answer, expected):
    from plmods.rewards import math_answer

    assert math_answer(["q"], [completion], [answer]) == [expected]


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("so 3+4 = 7.", "7", 1.0),
        ("7", "7", 1.0),
        ("The sum is 1,234", "1234", 1.0),
        ("-3", "-3", 1.0),
        ("2.50", "2.5", 1.0),
        ("7 then 8", "7", 0.0),  # the last number counts
        ("seven", "7", 0.0),
        ("", "7", 0.0),
        ("3+4=77", "7", 0.0),
    ],
)
def test_last_number_reads_the_last_number(completion, answer, expected):
    from plmods.rewards import last_number

    assert last_number(["q"], [completion], [answer]) == [expected]

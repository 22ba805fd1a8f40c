"""A reward every sampled group disagrees on, so smoke runs always update (importable by dotted
path from train.py runs: ``tests.rewards_for_tests.length_reward``)."""


def length_reward(prompts, completions, **_):
    return [float(len(c)) for c in completions]


def nan_reward(prompts, completions, **_):
    """A broken reward function: NaN for every completion."""
    return [float("nan")] * len(completions)

"""REINFORCE: returns-to-go and each baseline against hand-computed numbers.

Two episodes concatenated along time (torchrl's ``traj_format="cat"``), gamma = 0.5:
A: rewards [1, 1, 1] -> G = [1.75, 1.5, 1.0];  B: rewards [1, 2] -> G = [2.0, 2.0].
Steps in order A0 A1 A2 B0 B1; mean G = 8.25 / 5 = 1.65.
"""

import re

import pytest
import torch
from tensordict import TensorDict

from plmods.algos import ControlModule
from plmods.envs import ControlEnv
from plmods.errors import ConfigError
from plmods.rollout.returns import returns_to_go

G = [1.75, 1.5, 1.0, 2.0, 2.0]


def _module(**kwargs):
    torch.manual_seed(0)
    args = {"frames_per_batch": 64, "gamma": 0.5, "normalize_advantage": False} | kwargs
    return ControlModule.reinforce(ControlEnv("CartPole-v1", num_envs=4), **args)


def _batch():
    done = torch.tensor([False, False, True, False, True]).unsqueeze(-1)
    return TensorDict(
        {
            "observation": torch.randn(5, 4),
            "action": torch.tensor([0, 1, 0, 1, 1]),
            "next": {"reward": torch.tensor([[1.0], [1.0], [1.0], [1.0], [2.0]]), "done": done},
        },
        [5],
    )


def test_returns_to_go_hand_computed():
    b = _batch()
    g = returns_to_go(b["next", "reward"], b["next", "done"], 0.5)
    torch.testing.assert_close(g.squeeze(-1), torch.tensor(G), atol=1e-6, rtol=0)


def test_no_baseline_advantage_is_the_return():
    steps = _module(baseline="none").estimate_advantage(_batch())
    torch.testing.assert_close(steps["advantage"].squeeze(-1), torch.tensor(G), atol=1e-6, rtol=0)
    torch.testing.assert_close(steps["value_target"].squeeze(-1), torch.tensor(G), atol=1e-6, rtol=0)


def test_moving_average_baseline_uses_the_previous_mean():
    module = _module(baseline="moving_average", baseline_decay=0.9)
    first = module.estimate_advantage(_batch())
    # no history yet: b = 0, then b = mean(G) = 1.65
    torch.testing.assert_close(first["advantage"].squeeze(-1), torch.tensor(G), atol=1e-6, rtol=0)
    assert float(module.advantage_module.moving_baseline) == pytest.approx(1.65)
    second = module.estimate_advantage(_batch())
    expected = torch.tensor(G) - 1.65
    torch.testing.assert_close(second["advantage"].squeeze(-1), expected, atol=1e-6, rtol=0)
    # b <- 0.9 * 1.65 + 0.1 * 1.65
    assert float(module.advantage_module.moving_baseline) == pytest.approx(1.65)
    batch = _batch()
    batch["next", "reward"] = batch["next", "reward"] * 2  # mean G doubles to 3.3
    module.estimate_advantage(batch)
    assert float(module.advantage_module.moving_baseline) == pytest.approx(0.9 * 1.65 + 0.1 * 3.3)


def test_value_baseline_subtracts_the_critic():
    module = _module(baseline="value")
    last = [m for m in module.critic.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(0.5)  # V(s) = 0.5 everywhere
    steps = module.estimate_advantage(_batch())
    torch.testing.assert_close(steps["advantage"].squeeze(-1), torch.tensor(G) - 0.5, atol=1e-6, rtol=0)


STD_G = 0.175**0.5  # unbiased std of G: squared deviations from 1.65 sum to 0.7, / 4


def test_normalized_advantage_is_scaled_not_recentred():
    """normalize_advantage divides by the std only: b = 0 stays b = 0 (the returns, not the
    returns minus their batch mean, as the standardisation before 0.2 made it)."""
    a = _module(baseline="none", normalize_advantage=True).estimate_advantage(_batch())["advantage"].squeeze(-1)
    torch.testing.assert_close(a, torch.tensor(G) / STD_G, atol=1e-5, rtol=0)
    assert float(a.std()) == pytest.approx(1.0, abs=1e-5)


def test_every_baseline_survives_normalisation():
    """The audit's defect: under normalize_advantage the moving-average baseline did nothing
    (none and moving_average gave identical advantages). Second batch: b = 1.65."""
    results = {}
    for baseline in ("none", "moving_average"):
        module = _module(baseline=baseline, normalize_advantage=True)
        module.estimate_advantage(_batch())
        results[baseline] = module.estimate_advantage(_batch())["advantage"].squeeze(-1)
    torch.testing.assert_close(results["none"], torch.tensor(G) / STD_G, atol=1e-5, rtol=0)
    centred = torch.tensor(G) - 1.65  # std 0.41833 too: a shift does not change it
    torch.testing.assert_close(results["moving_average"], centred / STD_G, atol=1e-5, rtol=0)


def test_loss_actor_is_minus_mean_logprob_times_advantage():
    module = _module(baseline="none")
    steps = module.estimate_advantage(_batch())
    out = module.loss_module(steps).detach()
    with torch.no_grad():
        logits = module.actor.module[0](steps.select("observation").clone())["logits"]
    log_prob = torch.distributions.Categorical(logits=logits).log_prob(steps["action"])
    expected = -(log_prob * torch.tensor(G)).mean()
    assert float(out["loss_actor"]) == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"baseline": "mean"}, "advantage.baseline"),
        ({"episodes_per_batch": 0}, "episodes_per_batch"),
        ({"episodes_per_batch": 6}, "episodes_per_batch=6 must be a positive multiple of env.num_envs=4"),
        ({"baseline_decay": 1.0}, "advantage.baseline_decay"),
        ({"lr": 0}, "lr"),
    ],
)
def test_bad_settings(kwargs, setting):
    with pytest.raises(ConfigError, match="^" + re.escape(setting)):
        _module(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "check"),
    [
        # 8 episodes over 4 envs: the first two of every env
        ({"episodes_per_batch": 8}, lambda batch: int(batch["next", "done"].sum()) == 8),
        # rounds of one episode per env until at least 300 frames
        (
            {"episodes_per_batch": None, "frames_per_update": 300},
            lambda batch: batch.numel() >= 300 and int(batch["next", "done"].sum()) % 4 == 0,
        ),
    ],
)
def test_every_batch_is_whole_fresh_episodes_of_the_current_policy(kwargs, check):
    """Three batches in a row (not only the first): each is whole episodes that start at a reset
    (step_count 1 after every done), and every stored log-prob is the current policy's."""
    module = _module(**kwargs)
    module.setup("fit")
    frames, stepped = 0, 0
    for _ in range(3):
        batch, steps_taken = module.rollout.collect()
        frames += batch.numel()
        stepped += steps_taken
        done = batch["next", "done"].squeeze(-1)
        assert check(batch)
        assert bool(done[-1])  # ends with a complete episode
        steps = batch["next", "step_count"].squeeze(-1)
        starts = torch.cat([torch.tensor([True]), done[:-1]])
        assert (steps[starts] == 1).all() and (steps[~starts] > 1).all()  # no fragment of an older episode
        # steps of one episode share a trajectory id, and ids change only after a done
        ids = batch["collector", "traj_ids"]
        assert ((ids[1:] != ids[:-1]) <= done[:-1]).all()
        with torch.no_grad():
            current = module.actor.get_dist(batch.select("observation")).log_prob(batch["action"])
        torch.testing.assert_close(batch["action_log_prob"], current, atol=1e-5, rtol=0)
        # an update between batches: the next batch must come from the new policy
        with torch.no_grad():
            for p in module.loss_module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    # the steps taken count every env step: the trained episodes plus the steps taken after each
    # env's quota, in whole polls of frames_per_batch = 64
    assert stepped >= frames and stepped % 64 == 0
    module.teardown("fit")


def test_monte_carlo_advantage_defaults_and_bounds():
    from plmods.rollout.returns import MonteCarloAdvantage

    critic = torch.nn.Linear(4, 1)
    adv = MonteCarloAdvantage(critic)
    assert (adv.gamma, adv.baseline, adv.baseline_decay, adv.normalize_advantage) == (0.99, "value", 0.9, True)
    assert adv.uses_critic is True
    assert adv.moving_baseline_initialized.dtype == torch.bool and not bool(adv.moving_baseline_initialized)
    assert adv.moving_baseline.shape == () and float(adv.moving_baseline) == 0.0
    assert dict(adv.named_parameters()) == {}  # the critic is not registered here
    for baseline in ("none", "moving_average"):
        assert MonteCarloAdvantage(critic, baseline=baseline).uses_critic is False
    MonteCarloAdvantage(critic, gamma=1.0, baseline_decay=0.0)  # both bounds are valid
    for kwargs, message in (
        ({"gamma": 0.0}, "gamma must be in (0, 1], got 0.0."),
        ({"gamma": 1.01}, "gamma must be in (0, 1], got 1.01."),
        ({"baseline_decay": 1.0}, "baseline_decay must be in [0, 1), got 1.0."),
        ({"baseline_decay": -0.1}, "baseline_decay must be in [0, 1), got -0.1."),
        ({"baseline": "mean"}, "baseline must be one of ['none', 'moving_average', 'value'], got 'mean'."),
    ):
        with pytest.raises(ConfigError, match="^" + re.escape(message) + "$"):
            MonteCarloAdvantage(critic, **kwargs)

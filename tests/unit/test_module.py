"""ControlModule construction checks and evaluation."""

import re

import pytest
import torch

from plmods.algos import ControlModule
from plmods.envs import ControlEnv
from plmods.errors import ConfigError

ENV = ControlEnv("CartPole-v1", num_envs=4)


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"frames_per_batch": 64, "minibatch_size": 48}, "minibatch_size=48"),
        ({"frames_per_batch": 66}, "frames_per_batch=66"),
        ({"lr": 0.0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"clip_epsilon": 0.0}, "loss.clip_epsilon"),
        ({"clip_epsilon": 1.5}, "loss.clip_epsilon"),
        ({"gamma": 1.2}, "advantage.gamma"),
        ({"lmbda": -0.1}, "advantage.lmbda"),
        ({"epochs": 0}, "epochs"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"loss_critic_type": "huber"}, "loss.loss_critic_type"),
        ({"total_frames": 10}, "total_frames"),
    ],
)
def test_bad_settings_raise_naming_the_argument(kwargs, setting):
    # a class names its constructor argument; train.py restates it as algo.<argument>
    args = {"frames_per_batch": 64, "minibatch_size": 32} | kwargs
    with pytest.raises(ConfigError, match=r"(?<![.\w])" + re.escape(setting)):
        ControlModule.ppo(ENV, **args)


def test_checkpoint_state_has_one_copy_of_each_parameter():
    module = ControlModule.ppo(ENV, frames_per_batch=64, minibatch_size=32)
    params = [k for k in module.state_dict() if "params" in k]
    # 2 MLPs x 3 linear layers x (weight, bias)
    assert len(params) == 12
    assert len(list(module.parameters())) == 12


def test_evaluate_is_deterministic_and_counts_first_episodes():
    module = ControlModule.ppo(
        ControlEnv("CartPole-v1", num_envs=4, max_episode_steps=30),
        frames_per_batch=64,
        minibatch_size=32,
        eval_episodes=3,
    )
    first = module.evaluate()
    second = module.evaluate()
    assert first.shape == (3,)
    assert torch.equal(first, second)
    # CartPole pays 1 per step and the episode limit is 30
    assert ((first >= 1) & (first <= 30)).all()


def test_back_to_back_evaluations_agree_with_a_trained_like_policy():
    """Regression: reusing one eval env leaked the last step's done mask into the next reset."""
    module = ControlModule.ppo(
        ControlEnv("CartPole-v1", num_envs=4), frames_per_batch=64, minibatch_size=32, eval_episodes=5
    )
    runs = [module.evaluate() for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_evaluation_after_fit_keeps_the_training_observation_statistics():
    """Regression: after teardown the collector is gone; evaluation must still normalise
    observations with the trained statistics, not fresh ones."""
    module = ControlModule.ppo(
        ControlEnv("Pendulum-v1", num_envs=4, obs_norm=True),
        frames_per_batch=64,
        minibatch_size=32,
        eval_episodes=2,
    )
    module.setup("fit")
    for _ in range(5):
        module.rollout.collect()
    during = module.evaluate()
    module.teardown("fit")
    after = module.evaluate()
    assert torch.equal(during, after)

"""Control env factory: vectorisation, true final observations, validation, RNG neutrality."""

import pytest
import torch

from plmods.envs import ControlEnv
from plmods.errors import ConfigError


def test_unknown_env_id_names_setting_and_suggests():
    with pytest.raises(ConfigError, match=r"^env_id='CartPole-v2'.*CartPole-v1"):
        ControlEnv("CartPole-v2")


def test_num_envs_must_be_positive():
    with pytest.raises(ConfigError, match="^num_envs"):
        ControlEnv("CartPole-v1", num_envs=0)


def test_vectorised_batch_shape():
    env = ControlEnv("Pendulum-v1", num_envs=3).make(seed=0)
    td = env.rollout(5)
    assert td.batch_size == torch.Size([3, 5])
    assert td["next", "observation"].shape == (3, 5, 3)
    env.close()


def test_done_steps_keep_true_final_observation():
    """Gymnasium's vector env auto-resets inside step(); torchrl must still report the true last
    observation in ("next", "observation") and start the next step from the reset one."""
    env = ControlEnv("CartPole-v1", num_envs=2, max_episode_steps=4).make(seed=0)
    td = env.rollout(12, break_when_any_done=False)
    done = td["next", "done"].squeeze(-1)
    assert done.sum() >= 4  # every env hits the 4-step limit at least twice
    nxt, obs = td["next", "observation"][:, :-1], td["observation"][:, 1:]
    same = (nxt == obs).all(-1)
    # continuing steps: next obs is the following step's obs; done steps: a reset happened
    assert same[~done[:, :-1]].all()
    assert not same[done[:, :-1]].any()
    # truncation, not termination, at the time limit
    assert (td["next", "truncated"].squeeze(-1) == (td["next", "step_count"].squeeze(-1) == 4)).all()
    env.close()


def test_building_an_env_does_not_touch_the_global_rng():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    ControlEnv("CartPole-v1", num_envs=2).make(seed=1).close()
    assert torch.equal(torch.get_rng_state(), state)


def test_same_seed_same_resets():
    a = ControlEnv("Acrobot-v1", num_envs=2).make(seed=7).reset()["observation"]
    b = ControlEnv("Acrobot-v1", num_envs=2).make(seed=7).reset()["observation"]
    c = ControlEnv("Acrobot-v1", num_envs=2).make(seed=8).reset()["observation"]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_observation_normalisation_reaches_unit_scale():
    env = ControlEnv("Pendulum-v1", num_envs=8, obs_norm=True).make(seed=0)
    td = env.rollout(400, break_when_any_done=False)
    late = td["next", "observation"][:, -100:].reshape(-1, 3)
    assert late.mean(0).abs().max() < 0.3
    assert ((late.std(0) > 0.7) & (late.std(0) < 1.3)).all()
    env.close()


def test_reward_scale_scales_learner_reward_not_reported_return():
    torch.manual_seed(0)  # same random actions in both rollouts
    plain = ControlEnv("Pendulum-v1", num_envs=2).make(seed=3).rollout(20)
    torch.manual_seed(0)
    scaled = ControlEnv("Pendulum-v1", num_envs=2, reward_scale=0.1).make(seed=3).rollout(20)
    torch.testing.assert_close(scaled["next", "reward"], 0.1 * plain["next", "reward"])
    torch.testing.assert_close(scaled["next", "episode_reward"], plain["next", "episode_reward"])

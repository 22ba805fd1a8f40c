"""``GoRight-v0``: a 1-D corridor, registered with gymnasium so plmods' ``ControlEnv`` can build it.

The agent starts in cell 0 of a corridor of ``length`` cells and moves left (action 0) or right
(action 1); walls clip it to the corridor. Reaching the last cell ends the episode with reward +1
(every other step gives 0). The time limit (``max_episode_steps=20``) truncates slower walks, so a
uniformly random policy rarely reaches the end and the optimal return is 1.0 in ``length - 1``
steps. The observation is the position, one-hot (``float32``, shape ``[length]``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["ENV_ID", "GoRightEnv", "register"]

ENV_ID = "GoRight-v0"
MAX_EPISODE_STEPS = 20


class GoRightEnv(gym.Env):
    """A corridor of ``length`` cells; +1 for reaching the right end."""

    metadata = {"render_modes": []}

    def __init__(self, length: int = 8) -> None:
        if length < 2:
            raise ValueError(f"length must be >= 2, got {length}.")
        self.length = length
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(length,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.position = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.length, dtype=np.float32)
        obs[self.position] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.position = 0
        return self._obs(), {}

    def step(self, action):
        move = 1 if int(action) == 1 else -1
        self.position = min(max(self.position + move, 0), self.length - 1)
        terminated = self.position == self.length - 1
        reward = 1.0 if terminated else 0.0
        return self._obs(), reward, terminated, False, {}


def register() -> None:
    """Register ``GoRight-v0`` (once per process; importing ``custom_project`` does it)."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="custom_project.envs:GoRightEnv", max_episode_steps=MAX_EPISODE_STEPS)


register()

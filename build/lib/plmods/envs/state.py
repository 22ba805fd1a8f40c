"""Runtime env state for exact resume.

torchrl's ``Collector.state_dict()`` keeps transform statistics but deliberately drops the
running episodes ("runtime environment state is not generally serializable"). For gymnasium's
pure-Python vector envs it *is* serialisable, and a resumed PPO run must continue the same
episodes to match an uninterrupted one, so we save it here: nothing in torchrl or Lightning does.
"""

from __future__ import annotations

import pickle
from typing import Any

from torchrl.envs import EnvBase, TransformedEnv

__all__ = ["env_runtime_state", "load_env_runtime_state"]


def _gym_vector_env(env: EnvBase):
    base = env.base_env if isinstance(env, TransformedEnv) else env
    return getattr(base, "_env", None)


def env_runtime_state(env: EnvBase) -> dict[str, Any]:
    """Transform statistics (e.g. VecNorm) and the pickled gymnasium sub-envs (physics + RNG)."""
    state: dict[str, Any] = {}
    if isinstance(env, TransformedEnv):
        state["transform"] = env.transform.state_dict()
    vec = _gym_vector_env(env)
    if vec is not None and hasattr(vec, "envs"):
        state["gym_envs"] = pickle.dumps(vec.envs)
    return state


def load_env_runtime_state(env: EnvBase, state: dict[str, Any]) -> None:
    """Inverse of :func:`env_runtime_state` on an env built by the same factory."""
    if "transform" in state and isinstance(env, TransformedEnv):
        env.transform.load_state_dict(state["transform"])
    vec = _gym_vector_env(env)
    if "gym_envs" in state and vec is not None:
        envs = pickle.loads(state["gym_envs"])  # noqa: S301 - our own checkpoint
        if len(envs) != len(vec.envs):
            raise ValueError(
                f"checkpoint holds {len(envs)} envs but env.num_envs={len(vec.envs)}: "
                "resume with the num_envs the run was started with."
            )
        vec.envs = envs

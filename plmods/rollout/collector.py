"""The torchrl collector of the control modules, behind three small functions.

``make_collector`` builds torchrl's ``Collector`` around the module's own actor (no weight copies
to keep in sync). ``collector_state`` / ``load_collector_state`` capture and restore what a
resumed run needs to continue the same episodes bit for bit: torchrl's public
``Collector.state_dict()`` (frames, trajectory-id counter, transform statistics), the pickled
gymnasium sub-envs (``plmods.envs.state``) and the *carrier*, the tensordict the collector steps
from next (current observations, running return and step count). torchrl keeps the carrier
private (``Collector._carrier``) and documents runtime env state as not serialisable; this module
is the one place that reads it, and ``tests/unit/test_torchrl_internals.py`` fails if it moves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torchrl
from tensordict import TensorDictBase
from torchrl.collectors import Collector
from torchrl.envs import EnvBase, ExplorationType

from plmods.envs.state import env_runtime_state, load_env_runtime_state

__all__ = ["collector_state", "load_collector_state", "make_collector", "whole_episodes"]

# torchrl versions whose private carrier attribute this module was checked against
CHECKED_TORCHRL = ("0.14",)


def make_collector(env: EnvBase, policy: Any, *, frames_per_batch: int) -> Collector:
    """A single-process torchrl ``Collector`` yielding ``[num_envs, frames_per_batch / num_envs]``
    batches from ``env`` (seed it before: the constructor resets it) with ``policy`` sampling."""
    return Collector(
        env,
        policy,
        frames_per_batch=frames_per_batch,
        total_frames=-1,
        exploration_type=ExplorationType.RANDOM,
        auto_register_policy_transforms=False,
    )


def _carrier(collector: Collector) -> TensorDictBase:
    carrier = getattr(collector, "_carrier", None)
    if not isinstance(carrier, TensorDictBase):
        raise RuntimeError(
            f"torchrl {torchrl.__version__}: Collector has no `_carrier` tensordict (checked on torchrl "
            f"{', '.join(CHECKED_TORCHRL)}); plmods.rollout.collector must be updated for exact resume."
        )
    return carrier


def collector_state(collector: Collector) -> dict[str, Any]:
    """What a resumed run needs to continue this collector's episodes exactly."""
    public = collector.state_dict()
    return {
        # frames, iterations and the trajectory-id counter; the policy weights are the module's
        # (in its state dict) and the transform statistics are in "env": not stored twice
        "collector": {key: public[key] for key in ("frames", "iter", "traj_pool") if key in public},
        "carrier": _carrier(collector).clone(),
        "env": env_runtime_state(collector.env),
    }


def load_collector_state(collector: Collector, state: dict[str, Any]) -> None:
    """Inverse of :func:`collector_state` on a collector built by the same factory."""
    collector.load_state_dict(state["collector"], strict=False)
    load_env_runtime_state(collector.env, state["env"])
    # after load_state_dict, which starts fresh trajectory ids: the saved carrier brings back the
    # running episodes with their own ids (the id counter stays ahead, so ids never repeat)
    _carrier(collector).update_(state["carrier"])


def whole_episodes(next_batch: Callable[[], TensorDictBase], num_envs: int, episodes_per_env: int) -> TensorDictBase:
    """The first ``episodes_per_env`` complete episodes of every env, concatenated along time.

    ``next_batch()`` yields ``[num_envs, T]`` batches that start right after a reset of every env
    (``Collector.reset()``), so each episode is sampled by the current policy from its first step.
    Taking the same number of episodes from every env, not the first K to finish anywhere, keeps
    the batch free of the bias toward short episodes; the steps each env takes after its quota
    are dropped. Returns ``[sum of episode lengths]``, episodes contiguous (env by env, in order)
    and delimited by ``("next", "done")``: torchrl's ``traj_format="cat"`` layout.
    """
    chunks: list[TensorDictBase] = []
    finished = torch.zeros(num_envs, dtype=torch.long)
    while bool((finished < episodes_per_env).any()):
        chunks.append(next_batch())  # [num_envs, T]
        finished += chunks[-1]["next", "done"].reshape(num_envs, -1).sum(-1)
    steps = torch.cat(chunks, 1) if len(chunks) > 1 else chunks[0]  # [num_envs, T_total]
    done = steps["next", "done"].reshape(num_envs, -1)
    pieces = []
    for env_index in range(num_envs):
        last = int(done[env_index].nonzero()[episodes_per_env - 1])
        pieces.append(steps[env_index, : last + 1])
    return torch.cat(pieces, 0)

"""The rollout source of the control algorithms: torchrl's collector over vectorised envs.

``ControlRollout`` owns the collector's lifecycle (built per rank in ``start``, after the process
group exists; never pickled), and yields one iteration's batch:

- **fixed-size** batches ``[num_envs, frames_per_batch / num_envs]`` that continue the running
  episodes (PPO);
- **whole episodes** of the current policy (REINFORCE): ``episodes_per_batch / num_envs`` from
  every env after a reset, or rounds of one episode per env until ``frames_per_update`` frames
  (``rollout.collector.whole_episodes``), laid out ``[frames]`` along time.

It reports the env steps each batch took (episode batches step past their quota and drop those
steps: they count as frames) and saves and restores what exact resume needs (``state_dict``).
Env workers (``env.workers > 1``) are torchrl's multi collectors (``rollout.workers``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.collectors import Collector

from plmods.envs.control import ControlEnv
from plmods.errors import ConfigError
from plmods.rollout.collector import collector_state, load_collector_state, make_collector, whole_episodes
from plmods.rollout.workers import WorkerCollector
from plmods.utils import rng_state

__all__ = ["ControlRollout", "RESUME_SEED_OFFSET"]

RESUME_SEED_OFFSET = 7_919  # env workers of a resumed segment: seed + offset * iteration


class ControlRollout:
    """Args:
    env: the env factory.
    actor: the policy the collector runs (the module's own actor: no weight copies).
    frames_per_batch: frames of a fixed-size batch; with episode batches, the polling size.
    episodes_per_batch: whole episodes per batch (a multiple of ``env.num_envs``), or None.
    frames_per_update: whole episodes in rounds of one per env until this many frames, or None.
    """

    def __init__(
        self, env: ControlEnv, actor: Any, *, frames_per_batch: int, episodes_per_batch: int | None = None,
        frames_per_update: int | None = None,
    ) -> None:  # fmt: skip
        self.env_factory = env
        self.actor = actor
        self.frames_per_batch = frames_per_batch
        self.episodes_per_batch = episodes_per_batch
        self.frames_per_update = frames_per_update
        self.collector: Collector | WorkerCollector | None = None
        self._iter: Iterator[TensorDictBase] | None = None
        self._transform_state: dict[str, Any] | None = None

    @property
    def episodes(self) -> bool:
        """Whether batches are whole episodes (their size varies)."""
        return self.episodes_per_batch is not None or self.frames_per_update is not None

    # ------------------------------------------------------------------ lifecycle
    def start(self, seed: int) -> None:
        """Build the collector; the envs are seeded before it exists (its constructor resets them)."""
        if self.env_factory.workers > 1:
            self.collector = self._workers(seed)
        else:
            env = self.env_factory.make(seed=seed)
            self.collector = make_collector(env, self.actor, frames_per_batch=self.frames_per_batch)
        self._iter = iter(self.collector)

    def _workers(self, seed: int) -> WorkerCollector:
        """Envs stepped in torchrl worker processes (or Ray actors); the wrapper pushes the actor's
        weights to them before every batch."""
        return WorkerCollector(
            self.env_factory, self.actor, frames_per_batch=self.frames_per_batch, workers=self.env_factory.workers, seed=seed,
            backend=self.env_factory.backend,
        )  # fmt: skip

    @property
    def started(self) -> bool:
        return self.collector is not None

    def stop(self) -> None:
        """Shut the collector down, keeping the observation statistics (an evaluation after fit
        must see the trained ones)."""
        if self.collector is not None:
            self._transform_state = self.transform_state()
            self.collector.shutdown()
            self.collector = self._iter = None

    def transform_state(self) -> dict[str, Any] | None:
        """The training env's transform state (e.g. VecNorm statistics), during or after fit."""
        if isinstance(self.collector, WorkerCollector):
            return None  # per-worker statistics: obs_norm is refused with workers (ControlEnv)
        if self.collector is not None:
            return self.collector.env.transform.state_dict()
        return self._transform_state

    # ------------------------------------------------------------------ one batch
    def collect(self) -> tuple[TensorDictBase, int]:
        """``(batch, env steps taken for it)``."""
        if self._iter is None:
            raise RuntimeError("collect() called before start(): the collector is built in setup('fit').")
        if not self.episodes:
            batch = next(self._iter)
            return batch, batch.numel()
        num_envs = self.env_factory.num_envs
        per_env = (self.episodes_per_batch or num_envs) // num_envs
        episodes, frames, polled = [], 0, []

        def poll() -> TensorDictBase:
            polled.append(next(self._iter))
            return polled[-1]

        while True:
            self.collector.reset()  # every episode starts after this reset: no step of an earlier policy is kept
            episodes.append(whole_episodes(poll, num_envs, per_env))
            frames += episodes[-1].numel()
            if self.frames_per_update is None or frames >= self.frames_per_update:
                stepped = sum(chunk.numel() for chunk in polled)
                return (torch.cat(episodes, 0) if len(episodes) > 1 else episodes[0]), stepped

    # ------------------------------------------------------------------ exact resume
    def state_dict(self) -> dict[str, Any] | None:
        """This rank's collector state plus its RNG (None before ``start``)."""
        if self.collector is None:
            return None
        if isinstance(self.collector, WorkerCollector):
            # the workers' running episodes stay in their processes: a resumed run starts new ones
            return {"workers": self.collector.state_dict(), "rng": rng_state()}
        return {**collector_state(self.collector), "rng": rng_state()}

    def load_state_dict(self, state: dict[str, Any], resume_seed: int) -> None:
        """Restore a saved state (not the RNG: the caller restores it just before it is used);
        workers are rebuilt with ``resume_seed``, since their episodes cannot be restored."""
        if isinstance(self.collector, WorkerCollector) != ("workers" in state):
            raise ConfigError("env.workers differs between the checkpoint and this run (1 vs more); resume with the same setting.")
        if isinstance(self.collector, WorkerCollector):
            self.collector.shutdown()
            self.collector = self._workers(resume_seed)
            self._iter = iter(self.collector)
            self.collector.load_state_dict(state["workers"])
        else:
            load_collector_state(self.collector, state)

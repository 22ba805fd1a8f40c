"""Parallel env workers for the control modules: torchrl's own multi collectors, one wrapper.

``WorkerCollector`` splits ``env_factory.num_envs`` envs over ``workers`` collector processes
(``backend="process"``: torchrl ``MultiSyncCollector``) or Ray actors (``backend="ray"``: torchrl
``RayCollector``), both built through ``Collector(backend=..., num_collectors=workers, sync=True)``,
and yields ``[num_envs, T]`` batches laid out like a single-process ``Collector``'s: row ``r`` is the
env seeded ``seed + r`` (worker ``i`` owns rows ``i*k .. i*k+k-1``, ``k = num_envs // workers``).

Weights. The workers run their own copy of the policy module. With ``backend="process"`` torchrl's
default ``SharedMemWeightSyncScheme`` moves the policy's parameters into shared memory *in place*,
so in-place updates in the main process (``optimizer.step()``, ``load_state_dict``) reach the
workers with no push; a parameter *replaced* by a new tensor does not. Ray actors hold a pickled
copy: nothing arrives without a push. ``next_batch`` therefore pushes the policy's weights through
torchrl's public ``update_policy_weights_(policy)`` before every batch (about 5 ms), so the batch is
always sampled by the current policy; ``auto_push=False`` leaves that to ``update_weights()``.

Seeding. Worker ``i`` seeds its envs with ``seed + i*k`` (gymnasium then seeds sub-env ``j`` with
``seed + i*k + j``) and its torch RNG (action sampling) with ``seed + 1_000_003 * (i + 1)``.

torchrl starts worker processes with ``spawn`` unless a start method was set: build the collector
under ``if __name__ == "__main__":`` in scripts (inside ``Trainer.fit`` already is).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.collectors import BaseCollector, Collector
from torchrl.envs import EnvBase, ExplorationType

from plmods.envs.control import ControlEnv
from plmods.errors import ConfigError, require

__all__ = ["WorkerCollector", "make_worker_collector"]

BACKENDS = ("process", "ray")
WORKER_TORCH_SEED_STRIDE = 1_000_003
RAY_MEMORY_PER_WORKER = 512 * 1024**2  # Ray's default asks 2 GiB per collector actor


class _WorkerEnv:
    """Picklable env constructor of one worker; called in the worker, where it also seeds torch."""

    def __init__(self, env_factory: ControlEnv, num_envs: int, env_seed: int, torch_seed: int) -> None:
        self.env_factory, self.num_envs = env_factory, num_envs
        self.env_seed, self.torch_seed = env_seed, torch_seed
        self.parent_pid = os.getpid()

    def __call__(self) -> EnvBase:
        if os.getpid() != self.parent_pid:  # never reseed the trainer's own RNG
            torch.manual_seed(self.torch_seed)
        return self.env_factory.make(num_envs=self.num_envs, seed=self.env_seed)


def _check(env_factory: ControlEnv, frames_per_batch: int, workers: int, backend: str) -> None:
    require(backend in BACKENDS, f"backend={backend!r} is not one of {list(BACKENDS)}.")
    require(workers >= 1, f"workers must be >= 1, got {workers}.")
    num_envs = env_factory.num_envs
    require(
        num_envs % workers == 0,
        f"env.num_envs={num_envs} must be a multiple of workers={workers} (each worker steps "
        f"num_envs / workers envs).",
    )
    require(
        frames_per_batch >= num_envs and frames_per_batch % num_envs == 0,
        f"frames_per_batch={frames_per_batch} must be a positive multiple of env.num_envs={num_envs} "
        f"(each worker collects frames_per_batch / workers frames in whole steps of its envs).",
    )
    if backend == "ray" and "ray" not in sys.modules:
        try:
            import ray  # noqa: F401
        except ImportError as err:
            raise ConfigError("backend='ray' needs the ray package (pip install ray).") from err


def make_worker_collector(
    env_factory: ControlEnv,
    policy: nn.Module,
    *,
    frames_per_batch: int,
    workers: int,
    seed: int,
    backend: str = "process",
) -> BaseCollector:
    """torchrl's synchronous multi collector over ``workers`` workers, ``frames_per_batch`` frames
    per batch in all. ``"process"`` yields ``[num_envs, T]`` (``cat_results=0``); ``"ray"`` yields
    ``[workers, num_envs // workers, T]`` (``WorkerCollector`` flattens it). For Ray, a local
    cluster with ``workers`` CPUs is started unless ``ray.init`` was called before; the collector's
    ``shutdown()`` stops the cluster it started."""
    _check(env_factory, frames_per_batch, workers, backend)
    per_worker = env_factory.num_envs // workers
    env_fns = [
        _WorkerEnv(env_factory, per_worker, seed + i * per_worker, seed + WORKER_TORCH_SEED_STRIDE * (i + 1))
        for i in range(workers)
    ]
    common = dict(
        backend=backend,
        num_collectors=workers,
        sync=True,
        frames_per_batch=frames_per_batch,
        exploration_type=ExplorationType.RANDOM,
    )
    if backend == "process":
        return Collector(
            env_fns,
            policy,
            total_frames=-1,
            cat_results=0,  # workers' [k, T] batches concatenated along envs
            num_threads=torch.get_num_threads(),  # leave the trainer's thread count alone
            auto_register_policy_transforms=False,
            **common,
        )
    return Collector(
        env_fns,
        policy,
        total_frames=sys.maxsize,  # RayCollector stops at once with the usual -1
        ray_init_config={"num_cpus": workers, "include_dashboard": False, "log_to_driver": False},
        remote_configs={"num_cpus": 1, "memory": RAY_MEMORY_PER_WORKER},
        collector_kwargs={"auto_register_policy_transforms": False},
        **common,
    )


class WorkerCollector:
    """``[num_envs, T]`` batches from ``workers`` parallel workers, sampled by ``policy`` as it is now.

    Args:
        env_factory: the ``ControlEnv`` factory; its ``num_envs`` envs are split over the workers.
        policy: the actor module trained in this process (its weights are pushed to the workers).
        frames_per_batch: frames per batch over all workers (a multiple of ``env_factory.num_envs``).
        workers: worker processes or Ray actors (a divisor of ``env_factory.num_envs``).
        seed: seeds the envs (row ``r`` uses ``seed + r``) and the workers' torch RNGs.
        backend: ``"process"`` (torchrl ``MultiSyncCollector``) or ``"ray"`` (``RayCollector``).
        auto_push: push the policy's weights before every batch; ``False``: call ``update_weights``.
    """

    def __init__(
        self,
        env_factory: ControlEnv,
        policy: nn.Module,
        *,
        frames_per_batch: int,
        workers: int,
        seed: int,
        backend: str = "process",
        auto_push: bool = True,
    ) -> None:
        self.policy, self.backend, self.auto_push = policy, backend, auto_push
        self.num_envs, self.workers = env_factory.num_envs, workers
        self.collector = make_worker_collector(
            env_factory,
            policy,
            frames_per_batch=frames_per_batch,
            workers=workers,
            seed=seed,
            backend=backend,
        )
        self._iter = iter(self.collector)
        self.update_weights()  # Ray's weight sync starts at the first push

    def update_weights(self) -> None:
        """Copy the policy's current weights to every worker (torchrl ``update_policy_weights_``)."""
        self.collector.update_policy_weights_(self.policy)

    def next_batch(self) -> TensorDictBase:
        """The next batch, ``[num_envs, frames_per_batch // num_envs]``."""
        if self.auto_push:
            self.update_weights()
        batch = next(self._iter)
        return batch.flatten(0, 1) if batch.ndim == 3 else batch

    def __iter__(self) -> Iterator[TensorDictBase]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """torchrl's collector state (frames, iterations, trajectory ids, each worker's env transform
        state such as VecNorm statistics), without the policy weights (the module saves those).
        The envs' runtime state (observations, running episodes) stays in the workers: a resumed
        run starts new episodes."""
        state = self.collector.state_dict()
        if isinstance(state, list):  # Ray: one state per worker
            return {"workers": [_without_policy(s) for s in state]}
        return {key: _without_policy(value) for key, value in state.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict` on a collector built with the same settings."""
        if self.backend == "ray":
            self.collector.load_state_dict(state["workers"])
        else:
            # each worker loads strictly: give it the weights it holds now (the policy's)
            current = self.collector.state_dict()
            full = dict(state)
            for key, value in current.items():
                if isinstance(value, dict) and "policy_state_dict" in value:
                    full[key] = {**state[key], "policy_state_dict": value["policy_state_dict"]}
            self.collector.load_state_dict(full)
        self.update_weights()

    def shutdown(self) -> None:
        """Stop the workers (and a Ray cluster the collector started). Safe to call twice."""
        if self.collector is not None:
            self.collector.shutdown()
            self.collector = None

    def __enter__(self) -> WorkerCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _without_policy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "policy_state_dict"}
    return value

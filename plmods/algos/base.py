"""``RLModule``: the on-policy LightningModule base shared by the control algorithms.

One Lightning epoch is one policy iteration: the train DataLoader yields one batch of
``frames_per_batch`` transitions collected with the module's own actor (``next_batch``), and one
``training_step`` runs all of that iteration's minibatch updates (manual optimization: Lightning's
per-step machinery costs ~1.5 ms, a third of a small PPO update, so it runs once per iteration).

The base owns what every on-policy algorithm shares: the torchrl collector and env lifecycle,
evaluation in Lightning's validation loop, per-iteration metric means, the frame budget, and exact
resume (collector/env runtime state and RNG).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from lightning import LightningModule
from lightning.pytorch.strategies import SingleDeviceStrategy
from tensordict import TensorDictBase
from torch.utils.data import DataLoader
from torchrl.collectors import Collector
from torchrl.envs import ExplorationType, VecNormV2

from plmods.envs.control import ControlEnv
from plmods.envs.state import env_runtime_state, load_env_runtime_state
from plmods.errors import require
from plmods.models.control import MLPActorCritic
from plmods.rollout.dataset import iteration_loader
from plmods.rollout.evaluation import first_episode_returns
from plmods.utils import rng_state, set_rng_state

__all__ = ["RLModule"]

EVAL_SEED_OFFSET = 1_000_003  # evaluation episodes never share seeds with training envs
RANK_SEED_OFFSET = 10_007  # each DDP rank collects with its own seed


def check_update_settings(lr: float, loss_critic_type: str, max_grad_norm: float | None) -> None:
    """Validation shared by every algorithm's optimizer settings (names as in the YAML)."""
    require(lr > 0, f"algo.lr must be > 0, got {lr}.")
    require(
        loss_critic_type in ("l1", "l2", "smooth_l1"),
        f"algo.loss_critic_type must be one of l1, l2, smooth_l1, got {loss_critic_type!r}.",
    )
    require(
        max_grad_norm is None or max_grad_norm > 0,
        f"algo.max_grad_norm must be > 0 or null, got {max_grad_norm}.",
    )


class RLModule(LightningModule):
    """Base of the control modules. Subclasses build ``self.loss_module`` and implement
    ``prepare_batch`` (e.g. advantages) and ``update`` (the optimizer steps of one iteration).

    Args:
        env: env factory (``ControlEnv``); the env itself is built in ``setup``.
        model: actor/critic factory (``MLPActorCritic``).
        frames_per_batch: transitions collected per policy iteration (over all of ``env.num_envs``).
        total_frames: frame budget; training stops once reached (also the horizon of annealing).
        seed: seed of the training envs (rank ``r`` uses ``seed + r * 10007``).
        eval_episodes: deterministic evaluation episodes per validation run.
    """

    def __init__(
        self,
        env: ControlEnv,
        model: MLPActorCritic | None = None,
        frames_per_batch: int = 512,
        total_frames: int = 100_000,
        seed: int = 0,
        eval_episodes: int = 10,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        require(frames_per_batch >= 1, f"algo.frames_per_batch must be >= 1, got {frames_per_batch}.")
        require(
            frames_per_batch % env.num_envs == 0,
            f"algo.frames_per_batch={frames_per_batch} must be a multiple of "
            f"env.num_envs={env.num_envs} (each collector step yields num_envs frames).",
        )
        require(
            total_frames >= frames_per_batch,
            f"algo.total_frames={total_frames} must be >= algo.frames_per_batch={frames_per_batch}.",
        )
        require(eval_episodes >= 1, f"algo.eval_episodes must be >= 1, got {eval_episodes}.")
        self.env_factory = env
        self.model_factory = model or MLPActorCritic()
        self.frames_per_batch = frames_per_batch
        self.total_frames = total_frames
        self.seed = seed
        self.eval_episodes = eval_episodes

        probe = env.make(num_envs=1)
        actor, critic = self.model_factory.build(probe)
        probe.close()
        # The loss module (built by the subclass) registers these same parameter tensors; keeping
        # actor and critic out of the Module tree keeps checkpoints and optimizers free of copies.
        object.__setattr__(self, "actor", actor)
        object.__setattr__(self, "critic", critic)

        self.frames = 0  # global frames (all ranks)
        self.iteration = 0
        self.train_seconds = 0.0  # wall time inside fit, summed over resumed segments
        self.val_history: list[dict[str, float]] = []  # one row per evaluation
        self._fit_start: float | None = None
        self._collector: Collector | None = None
        self._collector_iter: Iterator[TensorDictBase] | None = None
        self._pending_rng: dict[str, Any] | None = None
        self._env_transform_state: dict[str, Any] | None = None
        self._reset_iteration_stats()

    # ------------------------------------------------------------------ lifecycle
    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def setup(self, stage: str) -> None:
        if stage != "fit" or self._collector is not None:
            return
        rank = self.global_rank if self._trainer is not None else 0
        seed = self.seed + rank * RANK_SEED_OFFSET
        # Seed before the collector exists: its constructor resets the env.
        env = self.env_factory.make(seed=seed)
        self._collector = Collector(
            env,
            self.actor,  # the module's own actor: no weight copies to keep in sync
            frames_per_batch=self.frames_per_batch,
            total_frames=-1,
            exploration_type=ExplorationType.RANDOM,
            auto_register_policy_transforms=False,
            **self.collector_kwargs(),
        )
        self._collector_iter = iter(self._collector)

    def collector_kwargs(self) -> dict[str, Any]:
        """Extra ``torchrl.collectors.Collector`` arguments of a subclass (e.g. whole episodes)."""
        return {}

    def batch_frames(self, batch: TensorDictBase) -> int:
        """Environment frames in a collected batch."""
        return batch.numel()

    def next_collector_batch(self) -> TensorDictBase:
        """The collector's next batch (a subclass may gather several)."""
        return next(self._collector_iter)

    def teardown(self, stage: str) -> None:
        if self._collector is not None:
            # keep the observation statistics: an evaluation after fit must see the trained ones
            self._env_transform_state = self._collector.env.transform.state_dict()
            self._collector.shutdown()
            self._collector = self._collector_iter = None

    def _training_transform_state(self) -> dict[str, Any] | None:
        """The training env's transform state (e.g. VecNorm statistics), during or after fit."""
        if self._collector is not None:
            return self._collector.env.transform.state_dict()
        return self._env_transform_state

    def on_fit_start(self) -> None:
        strategy = self.trainer.strategy
        self._plain_backward = isinstance(
            strategy, SingleDeviceStrategy
        ) and strategy.precision_plugin.precision in ("32-true", "64-true")
        self._trained_params = [
            p for group in self.optimizers().optimizer.param_groups for p in group["params"]
        ]
        self._fit_start = time.perf_counter()
        self._fit_start_seconds = self.train_seconds

    def elapsed_seconds(self) -> float:
        """Training wall time so far, including segments before a resume."""
        if self._fit_start is None:
            return self.train_seconds
        return self._fit_start_seconds + time.perf_counter() - self._fit_start

    def train_dataloader(self) -> DataLoader:
        return iteration_loader(self)

    # ------------------------------------------------------------------ one policy iteration
    def next_batch(self) -> TensorDictBase:
        """The data of one policy iteration: collect, then ``prepare_batch`` (no grad)."""
        if self._pending_rng is not None:
            # restored as late as possible: nothing between here and a checkpoint's save point
            # draws from the global RNG in an uninterrupted run
            set_rng_state(self._pending_rng)
            self._pending_rng = None
        return self.prepare_batch(self.collect())

    def prepare_batch(self, batch: TensorDictBase) -> TensorDictBase:
        """Per-iteration preprocessing of the collected batch (advantages, schedules)."""
        return batch

    def progress_remaining(self) -> float:
        """1 at the start of training, 0 at ``total_frames``: the annealing schedule's input.
        A function of ``frames`` (checkpointed), so resumed runs anneal exactly as uninterrupted."""
        return max(0.0, 1.0 - self.frames / self.total_frames)

    def collect(self) -> TensorDictBase:
        """Next batch ``[num_envs, T]`` from the collector, with episode statistics recorded."""
        if self._collector_iter is None:
            raise RuntimeError("collect() called before setup('fit') built the collector.")
        self._iter_start = time.perf_counter()
        batch = self.next_collector_batch()
        self._collect_s = time.perf_counter() - self._iter_start
        self._iter_frames = self.batch_frames(batch)
        self.frames += self._iter_frames * self.world_size
        done = batch["next", "done"]
        if done.any():
            self._episode_returns = batch["next", "episode_reward"][done]
            self._episode_lengths = batch["next", "step_count"][done]
        return batch

    def total_loss(self, loss_td: TensorDictBase) -> torch.Tensor:
        """Sum of the ``loss_*`` terms of a torchrl loss output. A non-finite loss raises before
        the optimizer step, so parameters and the last checkpoint stay good."""
        loss = sum(value for key, value in loss_td.items() if key.startswith("loss_"))
        if not torch.isfinite(loss):
            terms = {k: float(v) for k, v in loss_td.items() if k.startswith("loss_")}
            raise FloatingPointError(f"non-finite loss at iteration {self.iteration}: {terms}")
        return loss

    def optimizer_step(self, loss: torch.Tensor, max_grad_norm: float | None) -> None:
        """One optimizer step on ``loss`` with optional global-norm gradient clipping.

        On one device in full precision, plain ``loss.backward()`` and ``clip_grad_norm_`` do what
        ``manual_backward``/``clip_gradients`` do there, without ~0.5 ms of hook dispatch per step
        (15-20% of a small PPO update). Other strategies and precisions go through Lightning,
        which handles gradient scaling and unscaling. ``optimizer.step()`` is Lightning's either
        way, so ``global_step`` and optimizer hooks are kept.
        """
        optimizer = self.optimizers()
        optimizer.zero_grad()
        if self._plain_backward:
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self._trained_params, max_grad_norm)
        else:
            self.manual_backward(loss)
            if max_grad_norm is not None:
                self.clip_gradients(optimizer, max_grad_norm, "norm")
        optimizer.step()

    # ------------------------------------------------------------------ metrics
    def _reset_iteration_stats(self) -> None:
        self._metric_sums: dict[str, torch.Tensor] = {}
        self._metric_count = 0
        self._iteration_metrics: dict[str, float | torch.Tensor] = {}
        self._episode_returns: torch.Tensor | None = None
        self._episode_lengths: torch.Tensor | None = None
        self._iter_start = time.perf_counter()
        self._collect_s = 0.0
        self._iter_frames = 0

    def accumulate(self, metrics: dict[str, torch.Tensor]) -> None:
        """Add one minibatch's scalars; ``training_step`` logs their iteration means once.
        Logging every minibatch cost as much as the PPO update itself."""
        for key, value in metrics.items():
            value = value.detach()
            self._metric_sums[key] = self._metric_sums[key] + value if key in self._metric_sums else value
        self._metric_count += 1

    def accumulate_iteration(self, metrics: dict[str, float | torch.Tensor]) -> None:
        """Scalars measured once per iteration, logged as ``train/<key>`` with the means."""
        self._iteration_metrics.update(metrics)

    def on_train_epoch_start(self) -> None:
        self._reset_iteration_stats()

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> None:
        """One policy iteration: the subclass's updates on ``batch``, then the iteration's logs
        (logged here, not at epoch end, so the progress bar and loggers see them this iteration)."""
        self.update(batch)
        self.iteration += 1
        self._log_iteration()

    def update(self, batch: TensorDictBase) -> None:
        """All optimizer steps of one iteration on ``batch``; ``accumulate`` their metrics."""
        raise NotImplementedError

    def _log_iteration(self) -> None:
        wall = time.perf_counter() - self._iter_start
        sync = self.world_size > 1
        logs = {f"train/{k}": self.iteration_mean(k) for k in self._metric_sums}
        logs.update({f"train/{k}": v for k, v in self._iteration_metrics.items()})
        logs["perf/fps"] = self._iter_frames * self.world_size / max(wall, 1e-9)
        logs["perf/collect_fps"] = self._iter_frames / max(self._collect_s, 1e-9)
        logs["perf/iteration_s"] = wall
        logs["iteration"] = float(self.iteration)
        logs["train/lr"] = self.optimizers().optimizer.param_groups[0]["lr"]
        self.log_dict(logs, sync_dist=sync, batch_size=1)
        self.log("frames", float(self.frames), batch_size=1)
        episodes = self._episode_means()
        if episodes is not None:
            self.log("train/episode_return", episodes[0], batch_size=1)
            self.log("train/episode_length", episodes[1], batch_size=1)

    def sum_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over all ranks (itself when not distributed); every rank must call it."""
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            reduced = value.detach().to(self.device)  # NCCL reduces device tensors only
            dist.all_reduce(reduced)
            return reduced.to(value.device)
        return value

    def iteration_mean(self, key: str) -> torch.Tensor:
        """Mean over this iteration's minibatches of an ``accumulate``-d scalar, on this rank."""
        return self._metric_sums[key] / max(self._metric_count, 1)

    def _episode_means(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Mean return and length of the episodes that ended this iteration, over all ranks.

        Summed with an explicit all-reduce (not ``sync_dist``): a rank with no finished episode
        must still take part, or the ranks that log would wait forever.
        """
        stats = torch.zeros(3)  # [sum of returns, sum of lengths, count]
        if self._episode_returns is not None:
            stats = torch.stack(
                [
                    self._episode_returns.sum().float(),
                    self._episode_lengths.sum().float(),
                    torch.tensor(float(self._episode_returns.numel())),
                ]
            )
        stats = self.sum_over_ranks(stats)
        if stats[2] == 0:
            return None
        return stats[0] / stats[2], stats[1] / stats[2]

    def on_train_epoch_end(self) -> None:
        self.train_seconds = self.elapsed_seconds()
        if self.frames >= self.total_frames:
            self.trainer.should_stop = True

    # ------------------------------------------------------------------ evaluation
    def val_dataloader(self) -> DataLoader:
        # A single item: one validation "step" runs all evaluation episodes at once. Its own
        # generator keeps the loader's base-seed draw off the global RNG (as for training).
        return DataLoader([0], batch_size=None, generator=torch.Generator())

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        returns = self.evaluate()
        sync = self.world_size > 1
        self.log("val/episode_return", returns.mean(), prog_bar=True, sync_dist=sync, batch_size=1)
        self.log("val/episode_return_std", returns.std(unbiased=False), sync_dist=sync, batch_size=1)
        return returns.mean()

    def on_validation_epoch_end(self) -> None:
        value = self.trainer.callback_metrics.get("val/episode_return")
        if value is not None and not self.trainer.sanity_checking:
            self.val_history.append(
                {
                    "iteration": self.iteration,
                    "frames": self.frames,
                    "wall_s": self.elapsed_seconds(),
                    "val/episode_return": float(value),
                }
            )

    def evaluate(self) -> torch.Tensor:
        """Returns of ``eval_episodes`` deterministic episodes (one per env, same seeds every time,
        so evaluations at different iterations are comparable)."""
        # a fresh env per evaluation (~20 ms): no state can leak from one evaluation to the next
        env = self.env_factory.make(num_envs=self.eval_episodes)
        try:
            training_state = self._training_transform_state()
            if training_state is not None and self.env_factory.obs_norm:
                # evaluate under the training statistics, frozen
                env.transform.load_state_dict(training_state)
                for transform in env.transform:
                    if isinstance(transform, VecNormV2):
                        transform.freeze()
            return first_episode_returns(
                env, self.actor, self.env_factory.episode_limit, seed=self.seed + EVAL_SEED_OFFSET
            )
        finally:
            env.close()

    # ------------------------------------------------------------------ checkpoints
    def _collector_state(self) -> dict[str, Any]:
        assert self._collector is not None
        return {
            # The carrier is the tensordict the collector steps from next (current observations,
            # running episode return and step count); torchrl keeps it private.
            "carrier": self._collector._carrier.clone(),
            # the counter that hands out trajectory ids: restored with the carrier's ids, so new
            # episodes never reuse the id of one still running (trajectory batches group by id)
            "traj_pool": self._collector._traj_pool.state_dict(),
            "env": env_runtime_state(self._collector.env),
            "rng": rng_state(),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = self._collector_state() if self._collector is not None else None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # every rank runs this hook; only rank 0 writes: gather each rank's own collector
            per_rank: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, state)
        else:
            per_rank = [state]
        checkpoint["plmods"] = {
            "frames": self.frames,
            "iteration": self.iteration,
            "train_seconds": self.train_seconds,
            "val_history": self.val_history,
            "per_rank": per_rank,
            "logger_version": getattr(self.logger, "version", None) if self._trainer else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("plmods")
        if saved is None:
            return
        self.frames = saved["frames"]
        self.iteration = saved["iteration"]
        self.train_seconds = saved["train_seconds"]
        self.val_history = list(saved["val_history"])
        rank = self.global_rank if self._trainer is not None else 0
        per_rank = saved["per_rank"]
        state = per_rank[rank] if rank < len(per_rank) else None
        if state is None or self._collector is None:
            return
        load_env_runtime_state(self._collector.env, state["env"])
        self._collector._carrier.update_(state["carrier"])
        self._collector._traj_pool.load_state_dict(state["traj_pool"])
        # Lightning may draw from the global RNG between restore and the first iteration
        self._pending_rng = state["rng"]

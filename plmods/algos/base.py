"""``RLModule``: the on-policy LightningModule base shared by the control algorithms.

One Lightning epoch is one policy iteration: the train DataLoader yields one batch of
``frames_per_batch`` transitions collected with the module's own actor (``next_batch``), and one
``training_step`` runs all of that iteration's minibatch updates (manual optimization: Lightning's
per-step machinery costs ~1.5 ms, a third of a small PPO update, so it runs once per iteration).

On top of ``IterationModule`` (the iteration loop, optimizer step, metric means), this base owns the
torchrl collector and env lifecycle, evaluation in Lightning's validation loop, the frame budget and exact
resume (collector/env runtime state and RNG).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch.utilities.seed import isolate_rng
from tensordict import TensorDictBase
from torchrl.collectors import Collector
from torchrl.envs import VecNormV2

from plmods.algos.iteration import EVAL_SEED_OFFSET, IterationModule
from plmods.envs.control import ControlEnv
from plmods.errors import ConfigError, require
from plmods.models.control import MLPActorCritic
from plmods.rollout.collector import collector_state, load_collector_state, make_collector
from plmods.rollout.evaluation import first_episode_returns
from plmods.rollout.workers import WorkerCollector
from plmods.utils import rng_state

__all__ = ["RLModule"]

RESUME_SEED_OFFSET = 7_919  # env workers of a resumed segment: seed + offset * iteration


class RLModule(IterationModule):
    """Base of ``ControlModule``: collector and env lifecycle, evaluation, frame budget, resume.
    The subclass builds ``self.loss_module`` and implements ``prepare_batch`` (advantages) and
    ``update`` (the optimizer steps of one iteration).

    Args:
        env: env factory (``ControlEnv``); the env itself is built in ``setup``.
        model: actor/critic factory (``MLPActorCritic``).
        frames_per_batch: transitions collected per policy iteration (over all of ``env.num_envs``).
        total_frames: frame budget; training stops once reached (also the horizon of annealing).
        seed: seeds the initial weights (built under ``isolate_rng``, so the global RNG is left
            as it was), the training RNG at fit start and the training envs (rank ``r`` uses
            ``seed + r * 10007`` for the last two).
        eval_episodes: deterministic evaluation episodes per validation run.
    """

    val_metrics = ("val/episode_return", "val/episode_return_std")
    x_axis = "frames"  # RL's x-axis: environment frames over all ranks

    def __init__(
        self,
        env: ControlEnv,
        *,
        model: MLPActorCritic | None = None,
        frames_per_batch: int = 512,
        total_frames: int = 100_000,
        seed: int = 0,
        eval_episodes: int = 10,
    ) -> None:
        super().__init__()
        require(frames_per_batch >= 1, f"frames_per_batch must be >= 1, got {frames_per_batch}.")
        require(
            frames_per_batch % env.num_envs == 0,
            f"frames_per_batch={frames_per_batch} must be a multiple of "
            f"env.num_envs={env.num_envs} (each collector step yields num_envs frames).",
        )
        require(
            total_frames >= frames_per_batch,
            f"total_frames={total_frames} must be >= frames_per_batch={frames_per_batch}.",
        )
        require(eval_episodes >= 1, f"eval_episodes must be >= 1, got {eval_episodes}.")
        self.env_factory = env
        self.model_factory = model or MLPActorCritic()
        self.frames_per_batch = frames_per_batch
        self.total_frames = total_frames
        self.seed = seed
        self.eval_episodes = eval_episodes

        probe = env.make(num_envs=1)
        with isolate_rng():  # same seed, same initial weights, whatever the global RNG holds
            torch.manual_seed(seed)
            actor, critic = self.model_factory.build(probe)
        probe.close()
        # The loss module (built by the subclass) registers these same parameter tensors; keeping
        # actor and critic out of the Module tree keeps checkpoints and optimizers free of copies.
        object.__setattr__(self, "actor", actor)
        object.__setattr__(self, "critic", critic)

        self.frames = 0  # global frames (all ranks)
        self._collector: Collector | None = None
        self._collector_iter: Iterator[TensorDictBase] | None = None
        self._env_transform_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------ lifecycle
    def setup(self, stage: str) -> None:
        if stage != "fit" or self._collector is not None:
            return
        # the training RNG (minibatch order, action sampling) follows the module's seed, in a
        # user's own Trainer too; a resumed run restores its saved RNG before the next iteration
        seed = self.rank_seed()
        seed_everything(seed, verbose=False)
        if self.env_factory.workers > 1:
            self._collector = self._make_workers(seed)
        else:
            # Seed before the collector exists: its constructor resets the env.
            env = self.env_factory.make(seed=seed)
            self._collector = make_collector(env, self.actor, frames_per_batch=self.frames_per_batch)
        self._collector_iter = iter(self._collector)

    def _make_workers(self, seed: int) -> WorkerCollector:
        """Envs stepped in torchrl worker processes (or Ray actors); the wrapper pushes the
        actor's weights to them before every batch."""
        return WorkerCollector(
            self.env_factory, self.actor, frames_per_batch=self.frames_per_batch,
            workers=self.env_factory.workers, seed=seed, backend=self.env_factory.backend,
        )  # fmt: skip

    def budget(self) -> tuple[float, float]:
        return float(self.frames), float(self.total_frames)

    def batch_frames(self, batch: TensorDictBase) -> int:
        """Environment frames in a collected batch."""
        return batch.numel()

    def next_collector_batch(self) -> TensorDictBase:
        """The collector's next batch (a subclass may gather several)."""
        return next(self._collector_iter)

    def teardown(self, stage: str) -> None:
        if self._collector is not None:
            # keep the observation statistics: an evaluation after fit must see the trained ones
            self._env_transform_state = self.training_transform_state()
            self._collector.shutdown()
            self._collector = self._collector_iter = None

    def training_transform_state(self) -> dict[str, Any] | None:
        """The training env's transform state (e.g. VecNorm statistics), during or after fit."""
        if isinstance(self._collector, WorkerCollector):
            return None  # per-worker statistics: obs_norm is refused with workers (ControlEnv)
        if self._collector is not None:
            return self._collector.env.transform.state_dict()
        return self._env_transform_state

    # ------------------------------------------------------------------ one policy iteration
    def make_batch(self) -> TensorDictBase:
        """The data of one policy iteration: collect, then ``prepare_batch`` (no grad)."""
        return self.prepare_batch(self.collect())

    def prepare_batch(self, batch: TensorDictBase) -> TensorDictBase:
        """Per-iteration preprocessing of the collected batch (advantages, schedules)."""
        return batch

    def collect(self) -> TensorDictBase:
        """Next batch ``[num_envs, T]`` from the collector, with episode statistics recorded."""
        if self._collector_iter is None:
            raise RuntimeError("collect() called before setup('fit') built the collector.")
        start = time.perf_counter()
        batch = self.next_collector_batch()
        self._collect_s = time.perf_counter() - start
        self._iter_frames = self.batch_frames(batch)
        self.frames += self._iter_frames * self.world_size
        done = batch["next", "done"]
        if done.any():
            self._episode_returns = batch["next", "episode_reward"][done]
            self._episode_lengths = batch["next", "step_count"][done]
        return batch

    # ------------------------------------------------------------------ metrics
    def _reset_iteration_stats(self) -> None:
        super()._reset_iteration_stats()
        self._episode_returns: torch.Tensor | None = None
        self._episode_lengths: torch.Tensor | None = None
        self._collect_s = 0.0
        self._iter_frames = 0

    def iteration_logs(self) -> dict[str, float | torch.Tensor]:
        logs = super().iteration_logs()
        logs["perf/fps"] = self._iter_frames * self.world_size / max(logs["perf/iteration_s"], 1e-9)
        logs["perf/collect_fps"] = self._iter_frames / max(self._collect_s, 1e-9)
        return logs

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> None:
        super().training_step(batch, batch_idx)
        self.log("frames", float(self.frames), batch_size=1)
        episodes = self._episode_means()
        if episodes is not None:
            self.log("train/episode_return", episodes[0], batch_size=1)
            self.log("train/episode_length", episodes[1], batch_size=1)

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
        super().on_train_epoch_end()
        if self.budget_spent():
            self.trainer.should_stop = True

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        returns = self.evaluate()
        sync = self.world_size > 1
        self.log("val/episode_return", returns.mean(), prog_bar=True, sync_dist=sync, batch_size=1)
        self.log("val/episode_return_std", returns.std(unbiased=False), sync_dist=sync, batch_size=1)
        self.log_x_axis()
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
            training_state = self.training_transform_state()
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

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict[str, Any]:
        """Headline numbers for ``summary.json``: frames, evaluation returns, when it was solved."""
        returns = [row["val/episode_return"] for row in self.val_history]
        threshold = self.env_factory.solved_threshold
        solved_row = next(
            (r for r in self.val_history if threshold is not None and r["val/episode_return"] >= threshold), None
        )
        train_return = self.trainer.callback_metrics.get("train/episode_return") if self._trainer else None
        return {
            "env": self.env_factory.env_id,
            "frames": self.frames,
            "val/episode_return": {
                "final": returns[-1] if returns else None,
                "best": max(returns) if returns else None,
            },
            "train/episode_return": float(train_return) if train_return is not None else None,
            "solved_threshold": threshold,
            "solved": solved_row is not None,
            "solved_at": solved_row,
        }

    def summary_line(self) -> str:
        s = self.summary()
        return (
            f"{self.frames} frames, {self.train_seconds:.1f} s, best val return "
            f"{s['val/episode_return']['best']}, solved={s['solved']}"
        )

    # ------------------------------------------------------------------ checkpoints
    def env_name(self) -> str:
        return self.env_factory.env_id

    def _collector_state(self) -> dict[str, Any]:
        assert self._collector is not None
        if isinstance(self._collector, WorkerCollector):
            # the workers' running episodes stay in their processes: a resumed run starts new ones
            return {"workers": self._collector.state_dict(), "rng": rng_state()}
        return {**collector_state(self._collector), "rng": rng_state()}

    def checkpoint_state(self) -> dict[str, Any]:
        per_rank = self.gather_per_rank(self._collector_state() if self._collector is not None else None)
        return {**super().checkpoint_state(), "frames": self.frames, "per_rank": per_rank}

    def load_checkpoint_state(self, saved: dict[str, Any]) -> None:
        super().load_checkpoint_state(saved)
        self.frames = saved["frames"]
        state = self.own_rank_state(saved["per_rank"])
        if state is None or self._collector is None:
            return
        if isinstance(self._collector, WorkerCollector) != ("workers" in state):
            raise ConfigError("env.workers differs between the checkpoint and this run (1 vs more); resume with the same setting.")
        if isinstance(self._collector, WorkerCollector):
            # the workers' episodes cannot be restored: rebuilt with seeds of their own for this
            # segment, a resumed run does not replay the first segment's episode starts
            self._collector.shutdown()
            self._collector = self._make_workers(self.rank_seed() + RESUME_SEED_OFFSET * self.iteration)
            self._collector_iter = iter(self._collector)
            self._collector.load_state_dict(state["workers"])
        else:
            load_collector_state(self._collector, state)
        # Lightning may draw from the global RNG between restore and the first iteration
        self._pending_rng = state["rng"]

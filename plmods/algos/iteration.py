"""``IterationModule``: one Lightning epoch = one policy iteration, for every plmods algorithm.

The train DataLoader yields one item per epoch (``next_batch``: the data of one iteration,
collected with the module's own policy) and one ``training_step`` runs all of that iteration's
optimizer steps (manual optimization: Lightning's per-step machinery costs ~1.5 ms, a third of a
small PPO update, so it runs once per iteration). Epoch-level callbacks, validation intervals and
checkpoints then mean what an RL user expects.

The base owns what control and language algorithms share: the optimizer step, per-iteration
metric means, cross-rank sums, training wall time, the validation history and the checkpointed
bookkeeping (iteration, RNG states restored just before the next iteration draws from them).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
from lightning import LightningModule
from lightning.pytorch.strategies import ModelParallelStrategy, SingleDeviceStrategy
from torch.utils.data import DataLoader

from plmods.algos.batch_plan import BatchPlan
from plmods.checkpoint import FORMAT, check_checkpoint, decode, encode
from plmods.errors import ConfigError
from plmods.rollout.dataset import iteration_loader
from plmods.utils import quiet_design_warnings, set_rng_state

__all__ = ["IterationModule", "EVAL_SEED_OFFSET", "RANK_SEED_OFFSET"]

EVAL_SEED_OFFSET = 1_000_003  # evaluation never shares seeds with training
RANK_SEED_OFFSET = 10_007  # each DDP rank collects / samples with its own seed


class IterationModule(LightningModule):
    """Subclasses implement ``make_batch`` (the data of one iteration, no grad) and ``update``
    (the optimizer steps of one iteration, ``accumulate``-ing their metrics)."""

    # validation metrics a checkpoint or early-stopping callback may monitor
    val_metrics: tuple[str, ...] = ()
    # the algorithm the module's parts make (summary.json's algo, checked on resume)
    algorithm: str = "iteration"
    # the metric loggers plot against (W&B define_metric): logged with every iteration's metrics
    x_axis: str = "iteration"
    # whether configure_model shards parameters under ModelParallelStrategy (else: replicated)
    shards_parameters: bool = False

    def __init__(self) -> None:
        super().__init__()
        quiet_design_warnings()  # in a user's own Trainer too: warnings about plmods' own choices
        self.automatic_optimization = False
        self.iteration = 0
        self.train_seconds = 0.0  # wall time inside fit, summed over resumed segments
        self.val_history: list[dict[str, Any]] = []  # one row per evaluation
        self._fit_start: float | None = None
        self._pending_rng: dict[str, Any] | None = None
        self._reset_iteration_stats()

    # ------------------------------------------------------------------ the protocol (plmods.protocols)
    # Every plmods module answers these the same way; a module with a KL coefficient or a
    # reference overrides them. Set in __init__ (not class attributes) only where state is.
    measured_kl: float | None = None
    has_reference: bool = False

    @property
    def kl_coef(self) -> float | None:
        """beta of the module's KL penalty; None: it has none (``AdaptiveKL`` then refuses it)."""
        return None

    @kl_coef.setter
    def kl_coef(self, value: float) -> None:
        raise ConfigError(f"{self.algorithm} has no KL coefficient to set (no KL penalty in its loss).")

    def sync_reference(self, alpha: float) -> None:
        """``ref <- alpha * policy + (1 - alpha) * ref``; a module without a reference refuses."""
        raise ConfigError(f"{self.algorithm} has no reference policy to sync.")

    def save_policy(self, path: str) -> None:
        """The trained policy under ``path``; every rank calls it, rank 0 writes."""

    def batch_plan(self, world_size: int = 1) -> BatchPlan:
        """One iteration's sizes per rank and over ranks (logged at start-up)."""
        return BatchPlan(world_size)

    # ------------------------------------------------------------------ lifecycle
    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def rank_seed(self) -> int:
        """This rank's training seed: ``seed + rank * RANK_SEED_OFFSET``."""
        rank = self.global_rank if self._trainer is not None else 0
        return self.seed + rank * RANK_SEED_OFFSET

    def budget(self) -> tuple[float, float] | None:
        """``(spent, total)`` of the training budget in the unit it is set in (frames for the
        control modules, iterations for GRPO); None: no budget. The progress bar fills with it."""
        return None

    def budget_spent(self) -> bool:
        """Whether the training budget (frames, iterations) is used up."""
        budget = self.budget()
        return budget is not None and budget[0] >= budget[1]

    def on_train_start(self) -> None:
        # a run resumed from a checkpoint whose budget is spent stops before its first iteration:
        # no extra iteration, and its checkpoints are left exactly as they were
        if self.budget_spent():
            self.trainer.should_stop = True

    def on_fit_start(self) -> None:
        # also outside train.py (a user's own Trainer): denormals slowed tiny-LM steps 10-40x
        torch.set_flush_denormal(True)
        strategy = self.trainer.strategy
        self._plain_backward = isinstance(
            strategy, SingleDeviceStrategy
        ) and strategy.precision_plugin.precision in ("32-true", "64-true")
        self._trained_params = [
            p for group in self.optimizers().optimizer.param_groups for p in group["params"]
        ]

        self._fit_start = time.perf_counter()
        self._fit_start_seconds = self.train_seconds

    def configure_model(self) -> None:
        """Where a module shards its networks under ``ModelParallelStrategy`` (``trainer=fsdp``);
        GRPO shards its language model. A module that shards nothing (``shards_parameters`` False:
        the control modules, MLPs of a few thousand parameters) refuses that strategy: nothing
        would average its gradients, and Lightning cannot restore its checkpoints. ``train.py``
        runs such a module's ``trainer=fsdp`` as DDP."""
        if not self.shards_parameters and self._trainer is not None and isinstance(self.trainer.strategy, ModelParallelStrategy):
            raise ConfigError(
                f"{type(self).__name__} replicates its networks (nothing to shard): use DDPStrategy "
                "(trainer=ddp or ddp_sim), not ModelParallelStrategy."
            )

    def elapsed_seconds(self) -> float:
        """Training wall time so far, including segments before a resume."""
        if self._fit_start is None:
            return self.train_seconds
        return self._fit_start_seconds + time.perf_counter() - self._fit_start

    def train_dataloader(self) -> DataLoader:
        return iteration_loader(self)

    def val_dataloader(self) -> DataLoader:
        # A single item: one validation "step" runs the whole evaluation. Its own generator keeps
        # the loader's base-seed draw off the global RNG (as for training).
        return DataLoader([0], batch_size=None, generator=torch.Generator())

    # ------------------------------------------------------------------ one policy iteration
    def next_batch(self) -> Any:
        """The data of one policy iteration (``make_batch``), after restoring a resumed run's RNG."""
        if self._pending_rng is not None:
            # restored as late as possible: nothing between here and a checkpoint's save point
            # draws from the global RNG in an uninterrupted run
            set_rng_state(self._pending_rng)
            self._pending_rng = None
        self._iter_start = time.perf_counter()
        return self.make_batch()

    def make_batch(self) -> Any:
        raise NotImplementedError

    def update(self, batch: Any) -> None:
        """All optimizer steps of one iteration on ``batch``; ``accumulate`` their metrics."""
        raise NotImplementedError

    def on_train_epoch_start(self) -> None:
        self._reset_iteration_stats()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """One policy iteration: the subclass's updates on ``batch``, then the iteration's logs
        (logged here, not at epoch end, so the progress bar and loggers see them this iteration)."""
        self.update(batch)
        self.iteration += 1
        self.log_dict(self.iteration_logs(), sync_dist=self.world_size > 1, batch_size=1)

    def on_train_epoch_end(self) -> None:
        self.train_seconds = self.elapsed_seconds()

    def total_loss(self, loss_td: Any) -> torch.Tensor:
        """Sum of the ``loss_*`` terms of a torchrl loss output. A non-finite loss raises before
        the optimizer step, so parameters and the last checkpoint stay good."""
        loss = sum(value for key, value in loss_td.items() if key.startswith("loss_"))
        if not torch.isfinite(loss):
            terms = {k: float(v) for k, v in loss_td.items() if k.startswith("loss_")}
            raise FloatingPointError(f"non-finite loss at iteration {self.iteration}: {terms}")
        return loss

    def optimizer_step(self, loss: torch.Tensor | None, max_grad_norm: float | None) -> torch.Tensor | None:
        """One optimizer step on ``loss`` with optional global-norm gradient clipping; returns the
        gradient norm before clipping when clipping (plain path), else None. ``loss=None`` steps
        on gradients already accumulated with ``backward_only`` (after ``zero_grad``).

        On one device in full precision, plain ``loss.backward()`` and ``clip_grad_norm_`` do what
        ``manual_backward``/``clip_gradients`` do there, without ~0.5 ms of hook dispatch per step
        (15-20% of a small PPO update). Other strategies and precisions go through Lightning,
        which handles gradient scaling and unscaling. ``optimizer.step()`` is Lightning's either
        way, so ``global_step`` and optimizer hooks are kept.
        """
        optimizer = self.optimizers()
        if loss is not None:
            optimizer.zero_grad()
            self.backward_only(loss)
        grad_norm = None
        if max_grad_norm is not None:
            if self._plain_backward:
                grad_norm = torch.nn.utils.clip_grad_norm_(self._trained_params, max_grad_norm)
            else:
                self.clip_gradients(optimizer, max_grad_norm, "norm")
        optimizer.step()
        return grad_norm

    def backward_only(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of ``loss`` (no zeroing, no step): micro-batches."""
        if self._plain_backward:
            loss.backward()
        else:
            self.manual_backward(loss)

    # ------------------------------------------------------------------ metrics
    def _reset_iteration_stats(self) -> None:
        self._metric_sums: dict[str, torch.Tensor] = {}
        self._metric_count = 0
        self._iteration_metrics: dict[str, float | torch.Tensor] = {}
        self._iter_start = time.perf_counter()

    def accumulate(self, metrics: dict[str, torch.Tensor]) -> None:
        """Add one optimizer step's scalars; ``training_step`` logs their iteration means once.
        Logging every minibatch cost as much as the PPO update itself."""
        sums = self._metric_sums
        for key, value in metrics.items():
            value = value.detach()
            if key in sums:
                sums[key].add_(value)
            else:
                sums[key] = value.clone()
        self._metric_count += 1

    def accumulate_iteration(self, metrics: dict[str, float | torch.Tensor]) -> None:
        """Scalars measured once per iteration, logged as ``train/<key>`` with the means."""
        self._iteration_metrics.update(metrics)

    def iteration_mean(self, key: str) -> torch.Tensor:
        """Mean over this iteration's optimizer steps of an ``accumulate``-d scalar, on this rank."""
        return self._metric_sums[key] / max(self._metric_count, 1)

    def iteration_logs(self) -> dict[str, float | torch.Tensor]:
        """What ``training_step`` logs after each iteration (subclasses add their own)."""
        logs = {f"train/{k}": self.iteration_mean(k) for k in self._metric_sums}
        logs.update({f"train/{k}": v for k, v in self._iteration_metrics.items()})
        logs["perf/iteration_s"] = time.perf_counter() - self._iter_start
        logs["iteration"] = float(self.iteration)
        logs["train/lr"] = self.optimizers().optimizer.param_groups[0]["lr"]
        return logs

    def sum_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over all ranks (itself when not distributed), through the strategy's
        ``reduce``; every rank must call it."""
        return self._reduce(value, "sum")

    def mean_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` averaged over all ranks; every rank must call it."""
        return self.sum_over_ranks(value) / self.world_size

    def max_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """The largest ``value`` of all ranks; every rank must call it."""
        return self._reduce(value, "max")

    def _reduce(self, value: torch.Tensor, op: str) -> torch.Tensor:
        if self.world_size > 1:
            reduced = value.detach().clone().to(self.device)  # NCCL reduces device tensors only
            return self.trainer.strategy.reduce(reduced, reduce_op=op).to(value.device)
        return value

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict[str, Any]:
        """The algorithm's headline numbers for ``summary.json`` (``env``, ``solved`` and its own)."""
        return {}

    def summary_line(self) -> str:
        """One line for the run log."""
        return f"{self.iteration} iterations, {self.train_seconds:.1f} s"

    # ------------------------------------------------------------------ checkpoints
    def log_x_axis(self) -> None:
        """Log the x-axis value (``frames`` / ``iteration``) with the validation metrics too, so
        W&B plots every row against it (``define_metric(step_sync=True)`` alone left it out of
        the validation rows of a sweep's first run)."""
        self.log(self.x_axis, float(getattr(self, self.x_axis)), batch_size=1)

    def env_name(self) -> str:
        """What the module learns on (a gymnasium id, a task name): checked on resume."""
        return "none"

    def checkpoint_identity(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed by this module (``plmods.checkpoint``)."""
        return {"module": self.algorithm, "env": self.env_name()}

    def checkpoint_state(self) -> dict[str, Any]:
        """The bookkeeping every plmods checkpoint holds under ``checkpoint["plmods"]``."""
        return {
            "format": FORMAT,
            **self.checkpoint_identity(),
            "iteration": self.iteration,
            "train_seconds": self.train_seconds,
            "val_history": self.val_history,
            "logger_version": getattr(self.logger, "version", None) if self._trainer else None,
        }

    def gather_per_rank(self, state: Any) -> list[Any]:
        """Every rank's ``state``, in rank order (under DDP every rank runs the checkpoint hook
        and only rank 0 writes, so rank-local state such as RNGs is gathered); every rank must call it."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            per_rank: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, state)
            return per_rank
        return [state]

    def own_rank_state(self, per_rank: list[Any]) -> Any:
        """This rank's entry of a gathered list (None when the checkpoint had fewer ranks)."""
        rank = self.global_rank if self._trainer is not None else 0
        return per_rank[rank] if rank < len(per_rank) else None

    def load_checkpoint_state(self, saved: dict[str, Any]) -> None:
        self.iteration = saved["iteration"]
        self.train_seconds = saved["train_seconds"]
        self.val_history = list(saved["val_history"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # only tensors and plain data: loadable with torch.load(weights_only=True) (plmods.checkpoint)
        checkpoint["plmods"] = encode(self.checkpoint_state())
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = encode(dict(checkpoint["hyper_parameters"]), lossy=True)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("plmods")
        if saved is None:
            raise ConfigError("the checkpoint was not written by plmods (no plmods section); pass a plmods last.ckpt or best.ckpt.")
        check_checkpoint(checkpoint, module=self)
        self.load_checkpoint_state(decode(saved))


"""Adaptive KL coefficient: a callback that steers a module's KL penalty towards a target KL.

Once per policy iteration the coefficient beta of a KL penalty ``beta * KL(pi_old || pi)`` is moved
so that the KL measured over the iteration, d, tracks a target delta:

- ``ppo`` (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", sec. 4, KL penalty):
  d < delta / 1.5 -> beta / 2;  d > 1.5 * delta -> 2 * beta;  otherwise beta is kept.
- ``proportional`` (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences",
  sec. 2.2): e = clip(d / delta - 1, -c, c);  beta <- beta * (1 + e * n_steps / horizon).

The result is clamped to ``[min_kl_coef, max_kl_coef]``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from plmods.errors import ConfigError, require
from plmods.protocols import KLControlled

__all__ = ["AdaptiveKL", "next_kl_coef"]

RULES = ("ppo", "proportional")
INTERVALS = ("epoch", "step")


def next_kl_coef(
    kl_coef: float,
    measured_kl: float,
    target_kl: float,
    rule: str,
    *,
    horizon: int = 10_000,
    n_steps: int = 1,
    proportional_clip: float = 0.2,
) -> float:
    """The coefficient after one adaptation, before clamping (see the module docstring).

    ``horizon``, ``n_steps`` and ``proportional_clip`` (c) are used by the ``proportional`` rule only.
    A non-finite ``measured_kl`` raises ``ValueError``: it means the policy has diverged, and
    either rule would silently keep or poison beta.
    """
    if not math.isfinite(measured_kl):
        raise ValueError(f"measured_kl must be finite, got {measured_kl}.")
    if rule == "ppo":
        if measured_kl < target_kl / 1.5:
            return kl_coef / 2.0
        if measured_kl > 1.5 * target_kl:
            return kl_coef * 2.0
        return kl_coef
    if rule == "proportional":
        error = min(max(measured_kl / target_kl - 1.0, -proportional_clip), proportional_clip)
        return kl_coef * (1.0 + error * n_steps / horizon)
    raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}.")


class AdaptiveKL(Callback):
    """Adapt ``pl_module.kl_coef`` once per policy iteration from ``pl_module.measured_kl``.

    Works with any LightningModule of the ``plmods.protocols.KLControlled`` protocol:

    - ``kl_coef``: the KL coefficient beta, a float attribute or property that this callback reads
      and assigns (a Python float), None when the module has none. The module owns beta and keeps
      it in its checkpoints (plmods' modules hold it as a buffer of their loss); this callback
      stores no copy of it, so a checkpoint holds beta once;
    - ``measured_kl``: the KL measured over the last iteration (float or 0-dim tensor), or None when
      nothing was measured, in which case the iteration is skipped. The module sets it every
      iteration (a stale value would be used again). Under DDP or FSDP each rank reports the KL
      of its own data and the callback adapts with the mean over ranks, so every rank holds the
      same beta (every rank must report a value, or None, in the same iterations).

    Args:
        target_kl: delta, the KL per iteration to steer towards (> 0).
        rule: ``"ppo"`` (halve / double outside [delta / 1.5, 1.5 delta]) or ``"proportional"``.
        initial_kl_coef: assigned to ``pl_module.kl_coef`` when training starts; None keeps the
            module's own value. Ignored when resuming from a checkpoint holding this callback's state
            (the module's checkpointed beta is kept).
        min_kl_coef: lower bound of beta (> 0: both rules are multiplicative, 0 would stick).
        max_kl_coef: upper bound of beta (>= min_kl_coef).
        horizon: ``proportional`` rule: optimizer steps over which a constant error changes beta by
            a factor (1 + e).
        proportional_clip: ``proportional`` rule: c, the bound of the relative error e.
        interval: ``"epoch"`` adapts in ``on_train_epoch_end`` (one epoch is one iteration, as in
            plmods); ``"step"`` in ``on_train_batch_end``, for modules whose one training step is one
            iteration.
        log_key: the key beta is logged under after each adaptation.
        steps_per_update: ``proportional`` rule: n_steps; None uses the optimizer steps
            (``trainer.global_step`` delta, at least 1) since the last adaptation.

    State (checkpointed): the number of adaptations and a history of
    ``(global_step, measured_kl, kl_coef after the adaptation)`` rows; beta itself is the module's.
    """

    def __init__(
        self,
        target_kl: float = 0.01,
        rule: Literal["ppo", "proportional"] = "ppo",
        initial_kl_coef: float | None = None,
        min_kl_coef: float = 1e-4,
        max_kl_coef: float = 100.0,
        horizon: int = 10_000,
        proportional_clip: float = 0.2,
        interval: Literal["epoch", "step"] = "epoch",
        log_key: str = "train/kl_coef",
        steps_per_update: int | None = None,
    ) -> None:
        super().__init__()
        require(target_kl > 0, f"target_kl must be > 0, got {target_kl}.")
        require(rule in RULES, f"rule must be one of {', '.join(RULES)}, got {rule!r}.")
        require(min_kl_coef > 0, f"min_kl_coef must be > 0, got {min_kl_coef}.")
        require(
            max_kl_coef >= min_kl_coef,
            f"max_kl_coef={max_kl_coef} must be >= min_kl_coef={min_kl_coef}.",
        )
        require(
            initial_kl_coef is None or min_kl_coef <= initial_kl_coef <= max_kl_coef,
            f"initial_kl_coef must be null or in [min_kl_coef, max_kl_coef] = "
            f"[{min_kl_coef}, {max_kl_coef}], got {initial_kl_coef}.",
        )
        require(horizon >= 1, f"horizon must be >= 1, got {horizon}.")
        require(proportional_clip > 0, f"proportional_clip must be > 0, got {proportional_clip}.")
        require(interval in INTERVALS, f"interval must be one of epoch, step, got {interval!r}.")
        require(bool(log_key), f"log_key must be a non-empty string, got {log_key!r}.")
        require(
            steps_per_update is None or steps_per_update >= 1,
            f"steps_per_update must be >= 1 or null, got {steps_per_update}.",
        )
        self.target_kl = float(target_kl)
        self.rule = rule
        self.initial_kl_coef = initial_kl_coef
        self.min_kl_coef = float(min_kl_coef)
        self.max_kl_coef = float(max_kl_coef)
        self.horizon = horizon
        self.proportional_clip = float(proportional_clip)
        self.interval = interval
        self.log_key = log_key
        self.steps_per_update = steps_per_update

        # the module's beta as last seen or set here (a view for users, never checkpointed)
        self._kl_coef: float | None = None if initial_kl_coef is None else float(initial_kl_coef)
        self._num_updates = 0
        self._history: list[tuple[int, float, float]] = []
        # global_step of the last adaptation (or of the training start): n_steps counts from it
        self._last_step: int | None = None
        # set by load_state_dict: the checkpoint's beta (restored into the module) wins over
        # initial_kl_coef at training start
        self._restored = False

    @property
    def kl_coef(self) -> float | None:
        """The module's beta as this callback last set or saw it (None before training starts
        when no ``initial_kl_coef`` is set)."""
        return self._kl_coef

    @property
    def num_updates(self) -> int:
        """How many adaptations were made (iterations with ``measured_kl`` None not counted)."""
        return self._num_updates

    @property
    def history(self) -> list[tuple[int, float, float]]:
        """A copy of the ``(global_step, measured_kl, kl_coef)`` rows, one per adaptation."""
        return list(self._history)

    def check_module(self, pl_module: LightningModule) -> None:
        """Refuse a module without a KL coefficient, before any work (``setup``; ``train.py``
        calls it for every job of a sweep before the first starts). plmods' modules answer
        ``kl_coef`` before their model exists; a module whose ``kl_coef`` needs its own setup
        (which runs after this one) is checked again at train start."""
        if isinstance(pl_module, KLControlled) and pl_module.kl_coef is None:
            raise self._no_coefficient(pl_module)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self.check_module(pl_module)

    @staticmethod
    def _no_coefficient(pl_module: LightningModule) -> ConfigError:
        return ConfigError(
            f"callbacks.adaptive_kl adapts a KL coefficient, but this {getattr(pl_module, 'algorithm', type(pl_module).__name__)} "
            "has none: use a loss with a KL penalty (algo=ppo_kl; the LM algorithms with algo.loss.kl_coef > 0, e.g. 0.04) "
            "or drop the callback."
        )

    # on_train_start, not on_fit_start: Lightning calls on_fit_start before it restores
    # trainer.global_step and, under strategies that restore after setup, this callback's state.
    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not isinstance(pl_module, KLControlled):
            missing = [attr for attr in ("kl_coef", "measured_kl") if not hasattr(pl_module, attr)]
            raise ConfigError(
                f"callbacks.adaptive_kl needs a LightningModule with a `kl_coef` attribute (the KL "
                f"coefficient, read and assigned) and a `measured_kl` attribute (the last iteration's "
                f"KL, or None); {type(pl_module).__name__} has no {', '.join(missing)}."
            )
        if pl_module.kl_coef is None:
            raise self._no_coefficient(pl_module)
        if self.initial_kl_coef is not None and not self._restored:
            pl_module.kl_coef = float(self.initial_kl_coef)
        self._kl_coef = float(pl_module.kl_coef)
        self._restored = False
        if self._last_step is None:
            self._last_step = trainer.global_step

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.interval == "step":
            self._adapt(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.interval == "epoch":
            self._adapt(trainer, pl_module)

    def _adapt(self, trainer: Trainer, pl_module: LightningModule) -> None:
        measured = pl_module.measured_kl
        if measured is None:
            return
        measured = self._mean_over_ranks(trainer, float(measured))
        step = trainer.global_step
        if self.steps_per_update is not None:
            n_steps = self.steps_per_update
        else:
            n_steps = max(1, step - (self._last_step or 0))
        # read back from its one owner, the module (a float32 buffer rounds it the same way in an
        # uninterrupted and a resumed run, since the checkpoint holds that buffer)
        beta = next_kl_coef(
            float(pl_module.kl_coef),
            measured,
            self.target_kl,
            self.rule,
            horizon=self.horizon,
            n_steps=n_steps,
            proportional_clip=self.proportional_clip,
        )
        beta = min(max(beta, self.min_kl_coef), self.max_kl_coef)
        pl_module.kl_coef = beta
        self._kl_coef = float(pl_module.kl_coef)
        self._num_updates += 1
        self._history.append((step, measured, self._kl_coef))
        self._last_step = step
        # batch_size=1: nothing to infer from a batch in an epoch-end hook
        pl_module.log(self.log_key, self._kl_coef, batch_size=1)

    @staticmethod
    def _mean_over_ranks(trainer: Trainer, measured: float) -> float:
        """The mean of every rank's measured KL (each rank measured its own data): every rank
        then applies the rule to the same number and holds the same beta."""
        if trainer.world_size <= 1:
            return measured
        value = torch.tensor(measured, dtype=torch.float64, device=trainer.strategy.root_device)
        return float(trainer.strategy.reduce(value, reduce_op="mean"))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "num_updates": self._num_updates,
            "history": [list(row) for row in self._history],
            "last_step": self._last_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._num_updates = int(state_dict["num_updates"])
        self._history = [(int(s), float(d), float(b)) for s, d, b in state_dict["history"]]
        self._last_step = state_dict["last_step"]
        self._restored = True

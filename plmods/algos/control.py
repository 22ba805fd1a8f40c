"""``ControlModule``: the control loop, with its parts injected. PPO-clip, PPO-penalty and
REINFORCE are configurations of it.

One Lightning epoch is one iteration::

    make_batch (no grad)
      rollout     ControlRollout: torchrl's collector over vectorised envs (frames, or whole episodes)
      advantage   the injected estimator writes advantage / value_target (torchrl GAE, MonteCarloAdvantage)
    update        epochs x minibatches of the injected torchrl loss (sum of loss_* terms); optional target-KL stop
    validation    EpisodeReturns: deterministic episodes

| algorithm | ``loss`` | ``advantage`` | data per iteration |
|---|---|---|---|
| PPO (Schulman et al. 2017) | ``K3ClipPPOLoss`` (torchrl ``ClipPPOLoss``) | torchrl ``GAE`` | ``frames_per_batch`` frames |
| PPO-penalty (sec. 4) | ``K3KLPENPPOLoss`` (torchrl ``KLPENPPOLoss``) | torchrl ``GAE`` | same |
| REINFORCE (Williams 1992) | torchrl ``ReinforceLoss`` | ``MonteCarloAdvantage`` | whole fresh episodes |

``loss`` is a callable ``(actor, critic) -> LossModule`` and ``advantage`` a callable
``(value_network=critic) -> module writing advantage / value_target``: in YAML, Hydra nodes with
``_partial_: true``; in Python, ``functools.partial`` or the ``ppo`` / ``ppo_kl`` / ``reinforce``
class methods, which take the familiar flat arguments.

Annealing (CleanRL's rule): iteration i of N runs ``lr * (1 - i / N)`` (a torch ``LambdaLR``) and,
with ``anneal_clip_epsilon``, ``clip_epsilon * (1 - i / N)``. With whole-episode batches, whose
size varies, the fraction is that of the frame budget still unspent: ``1 - frames / total_frames``.

A loss with a KL penalty coefficient (``beta``) makes the module speak the ``kl_coef`` /
``measured_kl`` protocol (``plmods.protocols.KLControlled``): ``measured_kl`` is seed 003's
d = E_t[KL(pi_old || pi_theta)] for the policy after the iteration's updates, in one no-grad
pass over the batch (the mean of the penalty KLs the minibatches saw before their steps ran 2-5x
below it on CartPole and Acrobot, so the rule halved beta where it should have doubled it).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch.utilities.seed import isolate_rng
from tensordict import TensorDictBase
from torch import nn
from torchrl.data import LazyTensorStorage, ReplayBuffer, SamplerWithoutReplacement
from torchrl.objectives import ClipPPOLoss, KLPENPPOLoss, LossModule, ReinforceLoss
from torchrl.objectives.value import GAE

from plmods.algos.batch_plan import BatchPlan
from plmods.algos.iteration import EVAL_SEED_OFFSET, IterationModule
from plmods.algos.kl import policy_kl
from plmods.algos.ppo_loss import K3ClipPPOLoss, K3KLPENPPOLoss
from plmods.envs.control import ControlEnv
from plmods.errors import ConfigError, require
from plmods.models.control import MLPActorCritic
from plmods.rollout.control_rollout import RESUME_SEED_OFFSET, ControlRollout
from plmods.rollout.evaluation import EpisodeReturns
from plmods.rollout.returns import BASELINES, MonteCarloAdvantage

__all__ = ["ControlModule"]

# per-minibatch scalars of torchrl's losses that become iteration means (train/<key>)
_LOGGED = (
    "loss_objective", "loss_critic", "loss_entropy", "loss_actor", "loss_value", "clip_fraction", "entropy",
    "explained_variance", "approx_kl",
)  # fmt: skip
_CRITIC_LOSSES = ("loss_critic", "loss_value")

# checks of the loss / advantage arguments, before torchrl builds anything: name -> (valid?, what is valid)
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "clip_epsilon": (lambda v: 0 < v < 1, "in (0, 1)"),
    "entropy_coeff": (lambda v: v >= 0, ">= 0"),
    "critic_coeff": (lambda v: v >= 0, ">= 0"),
    "loss_critic_type": (lambda v: v in ("l1", "l2", "smooth_l1"), "one of l1, l2, smooth_l1"),
    "kl_coef": (lambda v: v >= 0, ">= 0"),
    "beta": (lambda v: v >= 0, ">= 0"),
    "samples_mc_kl": (lambda v: v >= 1, ">= 1"),
    "gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "lmbda": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "baseline": (lambda v: v in BASELINES, f"one of {list(BASELINES)}"),
    "baseline_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
}


def _check_keywords(name: str, factory: Callable[..., Any]) -> None:
    """Validate the arguments a ``functools.partial`` (a Hydra ``_partial_`` node) carries."""
    require(callable(factory), f"{name} must be a callable (a Hydra node with _partial_: true), got {factory!r}.")
    for key, value in (getattr(factory, "keywords", None) or {}).items():
        if key in _CHECKS:
            ok, valid = _CHECKS[key]
            require(ok(value), f"{name}.{key} must be {valid}, got {value!r}.")


class ControlModule(IterationModule):
    """A policy-gradient LightningModule for control envs with an injected torchrl loss and advantage.

    Args:
        env: env factory (``ControlEnv``); the envs are built per rank in ``setup``.
        loss: ``(actor, critic) -> LossModule`` (e.g. ``partial(K3ClipPPOLoss, clip_epsilon=0.2)``).
        advantage: ``(value_network=critic) -> estimator`` writing ``advantage`` and
            ``value_target`` (e.g. ``partial(GAE, gamma=0.99, lmbda=0.95)``). One whose
            ``uses_critic`` is False trains no critic (its loss terms are left out).
        model: actor/critic factory (``MLPActorCritic``).
        frames_per_batch: transitions per iteration (multiple of ``env.num_envs``); with episode
            batches, the collector's polling size.
        total_frames: budget of env steps over all ranks (training stops there; the horizon of the
            annealing schedules).
        episodes_per_batch: whole episodes of the current policy per iteration instead of
            ``frames_per_batch`` frames, a multiple of ``env.num_envs`` (every env contributes the
            same number: no bias toward short episodes). ``None``: fixed-size batches.
        frames_per_update: whole episodes in rounds of one per env until at least this many
            frames per iteration (instead of ``episodes_per_batch``).
        epochs: passes over each batch (one optimizer step per minibatch).
        minibatch_size: transitions per optimizer step, a divisor of ``frames_per_batch``;
            ``None``: the whole batch in one step (required with episode batches).
        lr: Adam learning rate.
        adam_eps: Adam epsilon (1e-5 as in the PPO reference implementations).
        anneal_lr: iteration i of N runs ``lr * (1 - i / N)``.
        anneal_clip_epsilon: iteration i of N clips at ``clip_epsilon * (1 - i / N)`` (a loss
            with ``clip_epsilon``).
        target_kl: stop an iteration's remaining minibatch passes right after the step of the
            first minibatch whose ``approx_kl`` (k3) exceeds it (a loss reporting ``approx_kl``;
            ``None``: off).
        max_grad_norm: clip the global gradient norm (``None``: no clipping).
        seed: seeds the initial weights (built under ``isolate_rng``, so the global RNG is left as
            it was), the training RNG at fit start and the training envs (rank ``r`` uses
            ``seed + r * 10007`` for the last two).
        eval_episodes: deterministic episodes per evaluation.
    """

    x_axis = "frames"  # RL's x-axis: environment frames over all ranks
    val_metrics = EpisodeReturns.metrics

    def __init__(
        self,
        env: ControlEnv,
        *,
        loss: Callable[..., LossModule],
        advantage: Callable[..., nn.Module],
        model: MLPActorCritic | None = None,
        frames_per_batch: int = 512,
        total_frames: int = 100_000,
        episodes_per_batch: int | None = None,
        frames_per_update: int | None = None,
        epochs: int = 10,
        minibatch_size: int | None = 256,
        lr: float = 1e-3,
        adam_eps: float = 1e-5,
        anneal_lr: bool = True,
        anneal_clip_epsilon: bool = False,
        target_kl: float | None = None,
        max_grad_norm: float | None = 0.5,
        seed: int = 0,
        eval_episodes: int = 10,
    ) -> None:  # pragma: no mutate block (save_hyperparameters reads this frame, named __init__)
        super().__init__()
        # every setting is checked before anything is built, naming the argument and what is valid
        require(
            isinstance(env, ControlEnv),
            f"env must be a ControlEnv (e.g. ControlEnv('CartPole-v1')), got {type(env).__name__} {env!r}.",
        )
        _check_keywords("loss", loss)
        _check_keywords("advantage", advantage)
        episodes = episodes_per_batch is not None or frames_per_update is not None
        require(frames_per_batch >= 1, f"frames_per_batch must be >= 1, got {frames_per_batch}.")
        require(
            frames_per_batch % env.num_envs == 0,
            f"frames_per_batch={frames_per_batch} must be a multiple of env.num_envs={env.num_envs} "
            "(each collector step yields num_envs frames).",
        )
        require(total_frames >= frames_per_batch, f"total_frames={total_frames} must be >= frames_per_batch={frames_per_batch}.")
        require(eval_episodes >= 1, f"eval_episodes must be >= 1, got {eval_episodes}.")
        require(
            episodes_per_batch is None or frames_per_update is None,
            f"set at most one of episodes_per_batch and frames_per_update, got {episodes_per_batch} and {frames_per_update}.",
        )
        require(
            episodes_per_batch is None or (episodes_per_batch >= 1 and episodes_per_batch % env.num_envs == 0),
            f"episodes_per_batch={episodes_per_batch} must be a positive multiple of env.num_envs={env.num_envs} "
            "(every env contributes the same number of episodes).",
        )
        require(frames_per_update is None or frames_per_update >= 1, f"frames_per_update must be >= 1, got {frames_per_update}.")
        require(epochs >= 1, f"epochs must be >= 1, got {epochs}.")
        require(
            not episodes or env.workers == 1,
            f"env.workers={env.workers} needs fixed-size batches: episode batches (episodes_per_batch, "
            "frames_per_update) reset every env between batches, which the worker processes do not.",
        )
        if episodes:
            require(
                minibatch_size is None,
                f"minibatch_size must be null with episode batches (their size varies), got {minibatch_size}.",
            )
        else:
            require(
                minibatch_size is None or (minibatch_size >= 1 and frames_per_batch % minibatch_size == 0),
                f"minibatch_size={minibatch_size} must be a positive divisor of frames_per_batch={frames_per_batch} or null.",
            )
        require(lr > 0, f"lr must be > 0, got {lr}.")
        require(adam_eps > 0, f"adam_eps must be > 0, got {adam_eps}.")
        require(target_kl is None or target_kl > 0, f"target_kl must be > 0 or null, got {target_kl}.")
        require(max_grad_norm is None or max_grad_norm > 0, f"max_grad_norm must be > 0 or null, got {max_grad_norm}.")
        self.save_hyperparameters(logger=False, ignore=["env", "model", "loss", "advantage"])
        self.env_factory = env
        self.model_factory = model or MLPActorCritic()
        self.frames_per_batch = frames_per_batch
        self.total_frames = total_frames
        self.seed = seed

        probe = env.make(num_envs=1)
        with isolate_rng():  # same seed, same initial weights, whatever the global RNG holds
            torch.manual_seed(seed)
            actor, critic = self.model_factory.build(probe)
        probe.close()
        # The loss module registers these same parameter tensors; keeping actor and critic out of
        # the Module tree keeps checkpoints and optimizers free of copies.
        object.__setattr__(self, "actor", actor)
        object.__setattr__(self, "critic", critic)
        self.loss_module: LossModule = loss(self.actor, self.critic)
        require(
            target_kl is None or getattr(self.loss_module, "reports_approx_kl", False),
            f"target_kl works only with K3ClipPPOLoss or K3KLPENPPOLoss (they report approx_kl), got "
            f"{type(self.loss_module).__name__}.",
        )
        require(
            not anneal_clip_epsilon or hasattr(self.loss_module, "clip_epsilon"),
            f"anneal_clip_epsilon works only with a clipped objective such as K3ClipPPOLoss, got {type(self.loss_module).__name__}.",
        )
        estimator = advantage(value_network=self.critic)
        if any(p is q for p in estimator.parameters() for q in self.critic.parameters()):
            # an estimator that registers the critic itself: kept unregistered here, or checkpoints
            # and the optimizer would see the critic's parameters twice (torchrl's GAE holds it
            # functionally and only registers its gamma / lmbda buffers, so it is registered)
            object.__setattr__(self, "advantage_module", estimator)
        else:
            self.advantage_module = estimator  # its own state (e.g. a moving baseline) is checkpointed
        self.train_critic = getattr(estimator, "uses_critic", True)
        self._clip_epsilon = float(self.loss_module.clip_epsilon) if anneal_clip_epsilon else None
        self.rollout = ControlRollout(
            env, self.actor, frames_per_batch=frames_per_batch, episodes_per_batch=episodes_per_batch,
            frames_per_update=frames_per_update,
        )  # fmt: skip
        self.evaluator = EpisodeReturns(env, eval_episodes, seed=seed + EVAL_SEED_OFFSET)
        self.frames = 0  # env frames over all ranks
        self.measured_kl: float | None = None
        self._logged_keys: list[str] | None = None

    # ------------------------------------------------------------------ the usual configurations
    # the arguments PPO-clip and PPO-penalty share, with their defaults (the YAML's, tested)
    _PPO_LOSS_DEFAULTS = {"normalize_advantage": True, "entropy_coeff": 0.0, "critic_coeff": 0.5, "loss_critic_type": "l2"}
    _GAE_DEFAULTS = {"gamma": 0.98, "lmbda": 0.8}

    @classmethod
    def _with_gae(cls, env: ControlEnv, loss_type: type, loss_kwargs: dict[str, Any], kwargs: dict[str, Any]):
        """``loss_type`` with the PPO-family loss arguments and ``GAE``, taken out of ``kwargs``."""
        shared = {key: kwargs.pop(key, default) for key, default in cls._PPO_LOSS_DEFAULTS.items()}
        gae = {key: kwargs.pop(key, default) for key, default in cls._GAE_DEFAULTS.items()}
        return cls(env, loss=partial(loss_type, **loss_kwargs, **shared), advantage=partial(GAE, **gae), **kwargs)

    @classmethod
    def ppo(
        cls, env: ControlEnv, *, clip_epsilon: float = 0.2, clip_value: bool = False, anneal_clip_epsilon: bool = True, **kwargs: Any
    ) -> ControlModule:
        """PPO-clip: ``K3ClipPPOLoss`` + ``GAE``. Also takes ``gamma`` (0.98), ``lmbda`` (0.8),
        ``normalize_advantage`` (True), ``entropy_coeff`` (0), ``critic_coeff`` (0.5),
        ``loss_critic_type`` ("l2"); other keywords go to the constructor."""
        loss_kwargs = {"clip_epsilon": clip_epsilon, "clip_value": clip_value}
        return cls._with_gae(env, K3ClipPPOLoss, loss_kwargs, {"anneal_clip_epsilon": anneal_clip_epsilon, **kwargs})

    @classmethod
    def ppo_kl(cls, env: ControlEnv, *, kl_coef: float = 1.0, samples_mc_kl: int = 1, **kwargs: Any) -> ControlModule:
        """PPO-penalty: ``K3KLPENPPOLoss`` + ``GAE``, torchrl's per-minibatch beta rule off
        (``increment = decrement = 1``: beta moves only through ``kl_coef``). The loss and GAE
        arguments are ``ppo``'s."""
        loss_kwargs = {"kl_coef": kl_coef, "increment": 1.0, "decrement": 1.0, "samples_mc_kl": samples_mc_kl}
        return cls._with_gae(env, K3KLPENPPOLoss, loss_kwargs, kwargs)

    @classmethod
    def reinforce(
        cls, env: ControlEnv, *, gamma: float = 0.99, baseline: str = "value", baseline_decay: float = 0.9,
        normalize_advantage: bool = True, loss_critic_type: str = "l2", **kwargs: Any,
    ) -> ControlModule:  # fmt: skip
        """REINFORCE: torchrl ``ReinforceLoss`` + ``MonteCarloAdvantage`` on whole fresh episodes,
        one update per batch (16 episodes by default)."""
        settings = {
            "episodes_per_batch": 16, "frames_per_batch": 256, "total_frames": 300_000, "epochs": 1,
            "minibatch_size": None, "lr": 3e-3, "adam_eps": 1e-8, "anneal_lr": False, "max_grad_norm": 1.0,
        } | kwargs  # fmt: skip
        if settings.get("frames_per_update") is not None and "episodes_per_batch" not in kwargs:
            settings["episodes_per_batch"] = None
        loss = partial(ReinforceLoss, loss_critic_type=loss_critic_type)
        advantage = partial(
            MonteCarloAdvantage, gamma=gamma, baseline=baseline, baseline_decay=baseline_decay,
            normalize_advantage=normalize_advantage,
        )  # fmt: skip
        return cls(env, loss=loss, advantage=advantage, **settings)

    @property
    def algorithm(self) -> str:
        """The algorithm the injected loss makes of this module (``summary.json``'s ``algo``)."""
        for loss_type, name in ((ClipPPOLoss, "PPO"), (KLPENPPOLoss, "PPO-KL"), (ReinforceLoss, "REINFORCE")):
            if isinstance(self.loss_module, loss_type):
                return name
        return type(self.loss_module).__name__

    # ------------------------------------------------------------------ the KL protocol (PPO-KL)
    @property
    def kl_coef(self) -> float | None:
        """beta of the KL penalty: the loss's ``beta`` buffer, its one owner (checkpointed);
        None for a loss without a penalty."""
        beta = getattr(self.loss_module, "beta", None)
        return None if beta is None else float(beta)

    @kl_coef.setter
    def kl_coef(self, value: float) -> None:
        if self.kl_coef is None:
            raise ConfigError(f"{self.algorithm} has no KL coefficient to set (its loss has no KL penalty).")
        self.loss_module.beta.fill_(float(value))

    # ------------------------------------------------------------------ lifecycle
    def setup(self, stage: str) -> None:
        if stage != "fit" or self.rollout.started:
            return
        # the training RNG (minibatch order, action sampling) follows the module's seed, in a
        # user's own Trainer too; a resumed run restores its saved RNG before the next iteration
        seed = self.rank_seed()
        seed_everything(seed, verbose=False)
        self.rollout.start(seed)
        if isinstance(self.advantage_module, MonteCarloAdvantage):
            self.advantage_module.reduce_mean = self.mean_over_ranks  # one moving baseline on every rank

    def teardown(self, stage: str) -> None:
        self.rollout.stop()

    def training_transform_state(self) -> dict[str, Any] | None:
        """The training env's transform state (e.g. VecNorm statistics), during or after fit."""
        return self.rollout.transform_state()

    def budget(self) -> tuple[float, float]:
        return float(self.frames), float(self.total_frames)

    def batch_plan(self, world_size: int = 1) -> BatchPlan:
        """Envs, frames (or episodes), minibatches and optimizer steps of one iteration."""
        plan = BatchPlan(world_size)
        hp = self.hparams
        plan.add("envs", self.env_factory.num_envs)
        if hp.episodes_per_batch is not None:
            plan.add("episodes", hp.episodes_per_batch)
        elif hp.frames_per_update is not None:
            plan.add("frames (at least, whole episodes)", hp.frames_per_update)
        else:
            plan.add("frames", self.frames_per_batch)
        minibatch = hp.minibatch_size
        plan.add("frames per optimizer step", minibatch if minibatch is not None else "the whole batch", summed=minibatch is not None)
        steps = hp.epochs * (self.frames_per_batch // minibatch if minibatch else 1)
        plan.add("optimizer steps (epochs x minibatches)", steps, summed=False)
        plan.add("gradient accumulation", 1, summed=False)
        planned = self.planned_iterations(world_size)
        plan.add("iterations in the frame budget", planned if planned is not None else "until total_frames", summed=False)
        return plan

    # ------------------------------------------------------------------ schedules
    def planned_iterations(self, world_size: int | None = None) -> int | None:
        """N: iterations in the frame budget when every rank collects ``frames_per_batch``; None
        with episode batches (their size varies: the budget is counted in frames)."""
        if self.rollout.episodes:
            return None
        return math.ceil(self.total_frames / (self.frames_per_batch * (world_size or self.world_size)))

    def num_iterations(self) -> int | None:
        """Deprecated name of :meth:`planned_iterations` (``epochs`` is mu, the passes per batch)."""
        warnings.warn("ControlModule.num_iterations() is deprecated: use planned_iterations().", DeprecationWarning, stacklevel=2)
        return self.planned_iterations()

    def anneal_fraction(self, iteration: int) -> float:
        """The annealed schedules' factor for iteration i (0-based): 1 - i / N (CleanRL's rule);
        with episode batches 1 - frames / total_frames, the unspent share of the frame budget at
        the iteration's start (frames as they stand when it is called)."""
        planned = self.planned_iterations()
        if planned is None:
            return max(0.0, 1.0 - self.frames / self.total_frames)
        return max(0.0, 1.0 - iteration / planned)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.loss_module.parameters(), lr=self.hparams.lr, eps=self.hparams.adam_eps)
        # plain lambdas: LambdaLR's state_dict keeps a non-function's __dict__, which a wrapped
        # (e.g. mutation-tested) bound method cannot pickle
        factor = (lambda i: self.anneal_fraction(i)) if self.hparams.anneal_lr else (lambda _: 1.0)
        # stepped once per iteration in on_train_epoch_end (manual optimization: Lightning does
        # not step it), when frames are those at the next iteration's start; its state is in
        # Lightning's checkpoints, so a resumed run anneals on time
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # ------------------------------------------------------------------ one iteration
    def make_batch(self) -> TensorDictBase:
        """Collect, then the advantage with the current critic (no grad): ``advantage`` and
        ``value_target``. Frames are summed over ranks, so every rank agrees on the budget."""
        if self._clip_epsilon is not None:  # annealed at the iteration's start
            self.loss_module.clip_epsilon.fill_(self._clip_epsilon * self.anneal_fraction(self.iteration))
        start = time.perf_counter()
        batch, stepped = self.rollout.collect()
        self._collect_s = time.perf_counter() - start
        self._iter_frames = stepped
        self.frames += int(self.sum_over_ranks(torch.tensor(float(stepped))))
        if self.rollout.episodes:
            self.accumulate_iteration({"frames_trained": float(batch.numel())})
        done = batch["next", "done"]
        if done.any():
            self._episode_returns = batch["next", "episode_reward"][done]
            self._episode_lengths = batch["next", "step_count"][done]
        return self.estimate_advantage(batch)

    def estimate_advantage(self, batch: TensorDictBase) -> TensorDictBase:
        """The injected estimator on ``batch`` with the current critic, no grad: writes
        ``advantage`` and ``value_target``."""
        with torch.no_grad():
            self.advantage_module(batch)
        return batch

    def minibatches(self, batch: TensorDictBase) -> Iterator[TensorDictBase]:
        """``epochs`` passes over the batch in random minibatches (sampling without replacement),
        or over the whole batch as it is when ``minibatch_size`` is None.

        A new buffer per iteration: torchrl's sampler pre-draws the next permutation when a pass
        ends and ``empty()`` keeps it, which would carry hidden state across iterations (and break
        exact resume). Building the buffer costs ~0.8 ms.
        """
        if self.hparams.minibatch_size is None:
            for _ in range(self.hparams.epochs):
                yield batch
            return
        buffer = ReplayBuffer(
            storage=LazyTensorStorage(self.frames_per_batch),
            sampler=SamplerWithoutReplacement(),
            batch_size=self.hparams.minibatch_size,
        )
        buffer.extend(batch.reshape(-1))
        for _ in range(self.hparams.epochs):
            yield from buffer

    def update(self, batch: TensorDictBase) -> None:
        """``epochs`` x minibatch optimizer steps. With a target KL, the iteration stops right
        after the optimizer step of the first minibatch whose ``approx_kl`` (measured before that
        step, against the batch's behaviour policy) exceeds the target: that minibatch's step is
        taken, the remaining ones are skipped (as in SB3 and CleanRL's ``--target-kl``)."""
        stopped_early = False
        target_kl = self.hparams.target_kl
        for minibatch in self.minibatches(batch):
            out = self.loss_module(minibatch)
            if not self.train_critic:
                out = out.exclude(*_CRITIC_LOSSES)  # the advantage needs no critic: none is trained
            self.optimizer_step(self.total_loss(out), self.hparams.max_grad_norm)
            if self._logged_keys is None:  # the loss's output keys are fixed: look them up once
                present = set(out.keys())  # (a TensorDict membership test costs ~6 us a key)
                self._logged_keys = [key for key in _LOGGED if key in present]
                self._penalty_kl = "kl" in present
            metrics = {key: out.get(key).mean() for key in self._logged_keys}
            if self._penalty_kl:  # the penalty's KL as each minibatch saw it before its step (not d)
                metrics["kl_penalty"] = out.get("kl").mean()
            self.accumulate(metrics)
            if target_kl is not None and self._kl_exceeds(metrics["approx_kl"], target_kl):
                stopped_early = True
                break
        iteration_metrics = {"stopped_early": float(stopped_early), "advantage_std": batch["advantage"].std()}
        baseline = getattr(self.advantage_module, "moving_baseline", None)
        if baseline is not None and getattr(self.advantage_module, "baseline", None) == "moving_average":
            iteration_metrics["baseline"] = float(baseline)
        if self.kl_coef is not None:
            # d = KL(pi_old || pi_new) over this rank's batch after its updates (train/kl, logged
            # as the mean over ranks); AdaptiveKL averages the ranks' values before its rule
            self.measured_kl = float(policy_kl(self.actor, batch))
            iteration_metrics["kl"] = self.measured_kl
        self.accumulate_iteration(iteration_metrics)

    def _kl_exceeds(self, approx_kl: torch.Tensor, limit: float) -> bool:
        """Whether the approximate KL passed ``limit``, decided identically on every rank: a rank
        that stopped alone would leave the others waiting in the gradient all-reduce."""
        return bool(self.mean_over_ranks(approx_kl) > limit)

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> None:
        super().training_step(batch, batch_idx)
        self.log("frames", float(self.frames), batch_size=1)
        episodes = self._episode_means()
        if episodes is not None:
            self.log("train/episode_return", episodes[0], batch_size=1)
            self.log("train/episode_length", episodes[1], batch_size=1)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self.budget_spent():  # frames summed over ranks: every rank stops on the same iteration
            self.trainer.should_stop = True
        self.lr_schedulers().step()

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

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> torch.Tensor:
        """Returns of the evaluator's deterministic episodes (same seeds every time, so
        evaluations at different iterations are comparable)."""
        return self.evaluator.evaluate(self.actor, self.training_transform_state())

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
                {"iteration": self.iteration, "frames": self.frames, "wall_s": self.elapsed_seconds(), "val/episode_return": float(value)}
            )

    # ------------------------------------------------------------------ summary and saving
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
            "val/episode_return": {"final": returns[-1] if returns else None, "best": max(returns) if returns else None},
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

    def save_policy(self, path: str) -> None:
        """The actor's and critic's weights, ``<path>/actor_critic.pt`` (rank 0)."""
        if self._trainer is not None and not self.trainer.is_global_zero:
            return
        from pathlib import Path

        Path(path).mkdir(parents=True, exist_ok=True)
        torch.save({"actor": self.actor.state_dict(), "critic": self.critic.state_dict()}, Path(path) / "actor_critic.pt")

    # ------------------------------------------------------------------ checkpoints
    def env_name(self) -> str:
        return self.env_factory.env_id

    def checkpoint_state(self) -> dict[str, Any]:
        per_rank = self.gather_per_rank(self.rollout.state_dict())
        return {**super().checkpoint_state(), "frames": self.frames, "per_rank": per_rank}

    def load_checkpoint_state(self, saved: dict[str, Any]) -> None:
        super().load_checkpoint_state(saved)
        self.frames = saved["frames"]
        state = self.own_rank_state(saved["per_rank"])
        if state is None or not self.rollout.started:
            return
        # workers are rebuilt with seeds of their own for this segment: a resumed run does not
        # replay the first segment's episode starts
        self.rollout.load_state_dict(state, resume_seed=self.rank_seed() + RESUME_SEED_OFFSET * self.iteration)
        # Lightning may draw from the global RNG between restore and the first iteration
        self._pending_rng = state["rng"]

"""What callbacks and ``run.py`` may use on a module, declared once.

Each callback names the small protocol it needs, so it works in any Lightning project whose
module provides it (``isinstance(module, KLControlled)`` checks the names; the behaviour below is
the contract). Every plmods module (``ControlModule``, ``LMModule``) provides ``PlmodsModule`` (and
so ``KLControlled``, ``HasReference``, ``HasBudget``, ``Evaluated``) with the same behaviour;
``ControlPolicy`` is the control module's, ``WarmUpTarget`` the language module's. Tested in
``tests/unit/test_protocols.py``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["ControlPolicy", "Evaluated", "HasBudget", "HasReference", "KLControlled", "PlmodsModule", "WarmUpTarget"]


@runtime_checkable
class KLControlled(Protocol):
    """A KL penalty whose coefficient beta can be steered (``AdaptiveKL``).

    ``kl_coef``: beta as a float, readable at any time (also before the model is built), or None
    when the module has no KL coefficient; assigning it sets the module's beta (its one owner
    keeps it in checkpoints), and assigning it on a module without one raises ``ConfigError``.
    ``measured_kl``: the KL measured over the last iteration (float), None when nothing was
    measured; under DDP each rank reports its own data's."""

    kl_coef: float | None
    measured_kl: float | None


@runtime_checkable
class HasReference(Protocol):
    """A reference policy that can be moved towards the policy (``RefPolicySync``).

    ``has_reference``: whether one exists. ``sync_reference(alpha)``: ``ref <- alpha * policy +
    (1 - alpha) * ref``; raises ``ConfigError`` when there is none."""

    has_reference: bool

    def sync_reference(self, alpha: float) -> None: ...


@runtime_checkable
class HasBudget(Protocol):
    """``budget()``: ``(spent, total)`` in the budget's own unit (frames, iterations), or None."""

    def budget(self) -> tuple[float, float] | None: ...


@runtime_checkable
class Evaluated(Protocol):
    """Iterations and evaluations (``Curves``, ``RankConsistency``): ``iteration`` (completed
    iterations), ``x_axis`` (the logged key curves are plotted against: ``frames`` or
    ``iteration``) and ``val_history`` (one dict per evaluation, with the x-axis key)."""

    iteration: int
    x_axis: str
    val_history: list[dict[str, Any]]


@runtime_checkable
class ControlPolicy(Protocol):
    """A control policy that can be rendered (``EpisodeVideo``): ``env_factory`` (a
    ``ControlEnv``), ``actor`` (a torchrl actor) and ``training_transform_state()`` (the training
    env's transform state, e.g. observation statistics, or None)."""

    env_factory: Any
    actor: Any

    def training_transform_state(self) -> dict[str, Any] | None: ...


@runtime_checkable
class WarmUpTarget(Protocol):
    """A language module a supervised warm-up can run before (``SFTWarmup``): ``model_factory``
    (an ``HFCausalLM``, replaced by one pointing at the warmed-up directory), ``task`` (a
    ``TextTask``), ``seed``, ``policy_built`` (the warm-up must run before the policy is built)
    and ``sft_stats`` (set to what the warm-up did)."""

    model_factory: Any
    task: Any
    seed: int
    policy_built: bool
    sft_stats: dict[str, Any] | None


@runtime_checkable
class PlmodsModule(KLControlled, HasReference, HasBudget, Evaluated, Protocol):
    """Everything ``run.py`` and the loggers read from a module: the protocols above plus
    ``val_metrics`` (what ``monitor`` may name), ``algorithm`` (``PPO``, ``PPO-KL``, ``REINFORCE``, ``GRPO``), ``env_name()``, ``summary()`` and
    ``summary_line()`` (``summary.json``), ``batch_plan(world_size)``, ``save_policy(path)`` (every
    rank calls it; rank 0 writes), ``gather_per_rank(value)`` and ``shards_parameters`` (whether
    ``configure_model`` shards it under ``ModelParallelStrategy``)."""

    val_metrics: tuple[str, ...]
    algorithm: str
    shards_parameters: bool

    def env_name(self) -> str: ...

    def summary(self) -> dict[str, Any]: ...

    def summary_line(self) -> str: ...

    def batch_plan(self, world_size: int = 1) -> Any: ...

    def save_policy(self, path: str) -> None: ...

    def gather_per_rank(self, value: Any) -> list[Any]: ...

"""Weighted sums of outcome reward functions, configured by dotted path."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from hydra.utils import get_method

from plmods.errors import ConfigError

__all__ = ["RewardFunctions", "RewardError", "resolve_callable"]


class RewardError(ConfigError):
    """A reward function returned something that is not one finite float per completion. Raised
    before any update of the round, so the last checkpoint is the last good state; ``train.py``
    prints it as one line and exits with 2 (the function is part of the run's settings)."""


def resolve_callable(path: str | Callable, setting: str) -> Callable:
    """``"package.module.function"`` -> the function (Hydra's ``get_method``); a callable is
    returned as is."""
    if callable(path):
        return path
    hydra_log = logging.getLogger("hydra.utils")  # get_method logs the failure it raises: one line, ours
    was_disabled, hydra_log.disabled = hydra_log.disabled, True
    try:
        return get_method(str(path))
    except ValueError as err:  # found, but not callable
        if "non-callable" in str(err):
            raise ConfigError(f"{setting}={path!r} is not callable.") from None
        raise ConfigError(f"{setting}={path!r} is not an importable callable ({err}).") from None
    except (ImportError, AttributeError) as err:
        raise ConfigError(
            f"{setting}={path!r} is not an importable callable ({err}). Give a dotted path such as "
            "plmods.rewards.exact_match."
        ) from None
    finally:
        hydra_log.disabled = was_disabled


class RewardFunctions:
    """``reward = sum_k weight_k * fn_k(prompts, completions, **fields)``; each term kept for logs.

    Args:
        functions: mapping ``name -> dotted path or callable`` or ``name -> {fn: path, weight: w}``.
    """

    def __init__(self, functions: Mapping[str, Any]) -> None:
        if not functions:
            raise ConfigError("algo.rewards is empty: give at least one reward function, e.g. "
                              "{correct: plmods.rewards.exact_match}.")
        self.terms: list[tuple[str, Callable, float]] = []
        for name, spec in functions.items():
            if isinstance(spec, Mapping):
                unknown = set(spec) - {"fn", "weight"}
                if "fn" not in spec or unknown:
                    raise ConfigError(f"algo.rewards.{name} must be a dotted path or {{fn: <path>, weight: <float>}}, got {dict(spec)}.")
                fn, weight = spec["fn"], float(spec.get("weight", 1.0))
            else:
                fn, weight = spec, 1.0
            self.terms.append((name, resolve_callable(fn, f"algo.rewards.{name}"), weight))

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], fields: Mapping[str, Sequence[Any]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total reward ``[N]`` and each unweighted term ``{name: [N]}``."""
        terms = {}
        total = torch.zeros(len(completions))
        for name, fn, weight in self.terms:
            values = _checked(fn(list(prompts), list(completions), **fields), name, fn, len(completions))
            terms[name] = values
            total += weight * values
        return total, terms


def _checked(values: Any, name: str, fn: Callable, n: int) -> torch.Tensor:
    """The values of one reward term as a float tensor ``[n]``, or a ``RewardError`` naming the
    function: a NaN or None reward would otherwise flow into advantages and summary.json."""
    label = f"reward function algo.rewards.{name} ({getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)})"
    try:
        count = len(values)
    except TypeError:
        raise RewardError(f"{label} returned {type(values).__name__}, not one float per completion.") from None
    if count != n:
        raise RewardError(f"{label} returned {count} values for {n} completions; it must return one per completion.")
    bad = next(((i, v) for i, v in enumerate(values) if not isinstance(v, (int, float)) and not torch.is_tensor(v)), None)
    if bad is not None:
        raise RewardError(f"{label} returned {bad[1]!r} for completion {bad[0]}; rewards must be finite floats.")
    tensor = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    if not torch.isfinite(tensor).all():
        i = int((~torch.isfinite(tensor)).nonzero()[0])
        raise RewardError(f"{label} returned {float(tensor[i])} for completion {i}; rewards must be finite floats.")
    return tensor

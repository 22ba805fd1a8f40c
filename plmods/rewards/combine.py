"""Weighted sums of outcome reward functions, configured by dotted path."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from hydra.utils import get_method

from plmods.errors import ConfigError

__all__ = ["RewardFunctions", "resolve_callable"]


def resolve_callable(path: str | Callable, setting: str) -> Callable:
    """``"package.module.function"`` -> the function (Hydra's ``get_method``); a callable is
    returned as is."""
    if callable(path):
        return path
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
            values = torch.as_tensor(fn(list(prompts), list(completions), **fields), dtype=torch.float32)
            if values.shape != total.shape:
                raise ValueError(f"reward {name!r} returned {tuple(values.shape)} values for {len(completions)} completions.")
            terms[name] = values
            total += weight * values
        return total, terms

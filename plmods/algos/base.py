"""Deprecated module: ``RLModule`` was the base class of ``ControlModule``. The control loop is now
one class whose rollout and evaluator are parts (``plmods.rollout.control_rollout``,
``plmods.rollout.evaluation``); ``RLModule`` names ``ControlModule`` for one release."""

from __future__ import annotations

import warnings

__all__ = ["RLModule"]  # noqa: F822 (module __getattr__, deprecated)


def __getattr__(name: str):
    if name == "RLModule":
        warnings.warn("plmods.algos.RLModule is deprecated: use plmods.algos.ControlModule.", DeprecationWarning, stacklevel=2)
        from plmods.algos.control import ControlModule

        return ControlModule
    raise AttributeError(name)

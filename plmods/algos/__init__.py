"""The LightningModules: one loop per domain, parts injected (``docs/architecture.md``).

``ControlModule`` (PPO, PPO-KL, REINFORCE on gymnasium control) and ``LMModule`` (GRPO, REINFORCE,
PPO on causal language models). ``IterationModule`` is the loop they share.
"""

import warnings

from plmods.algos.control import ControlModule
from plmods.algos.iteration import IterationModule

_LAZY = {
    # the language stack (transformers) is an optional extra: imported on first use only
    "LMModule": "plmods.algos.lm",
    "GRPOModule": "plmods.algos.grpo",
    "MaskedGRPOLoss": "plmods.algos.grpo_loss",
    "MaskedPPOLoss": "plmods.algos.ppo_lm",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "RLModule":  # deprecated for one release
        warnings.warn("plmods.algos.RLModule is deprecated: use plmods.algos.ControlModule.", DeprecationWarning, stacklevel=2)
        return ControlModule
    raise AttributeError(name)


__all__ = ["ControlModule", "GRPOModule", "IterationModule", "LMModule", "MaskedGRPOLoss", "MaskedPPOLoss"]

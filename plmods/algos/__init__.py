from plmods.algos.base import RLModule
from plmods.algos.control import ControlModule
from plmods.algos.iteration import IterationModule


def __getattr__(name: str):
    # the language stack (transformers) is an optional extra: import it on first use only
    if name == "GRPOModule":
        from plmods.algos.grpo import GRPOModule

        return GRPOModule
    raise AttributeError(name)


__all__ = ["ControlModule", "GRPOModule", "IterationModule", "RLModule"]

from plmods.algos.base import RLModule
from plmods.algos.iteration import IterationModule
from plmods.algos.ppo import PPOBase, PPOModule
from plmods.algos.ppo_kl import PPOKLModule
from plmods.algos.reinforce import ReinforceModule


def __getattr__(name: str):
    # the language stack (transformers) is an optional extra: import it on first use only
    if name == "GRPOModule":
        from plmods.algos.grpo import GRPOModule

        return GRPOModule
    raise AttributeError(name)


__all__ = ["GRPOModule", "IterationModule", "PPOBase", "PPOKLModule", "PPOModule", "RLModule", "ReinforceModule"]

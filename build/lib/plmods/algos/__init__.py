from plmods.algos.base import RLModule
from plmods.algos.ppo import PPOBase, PPOModule
from plmods.algos.ppo_kl import PPOKLModule
from plmods.algos.reinforce import ReinforceModule

__all__ = ["PPOBase", "PPOKLModule", "PPOModule", "RLModule", "ReinforceModule"]

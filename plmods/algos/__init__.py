from plmods.algos.base import RLModule
from plmods.algos.ppo import PPOBase, PPOModule
from plmods.algos.ppo_kl import PPOKLModule

__all__ = ["PPOBase", "PPOKLModule", "PPOModule", "RLModule"]

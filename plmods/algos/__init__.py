from plmods.algos.base import RLModule
from plmods.algos.ppo import PPOModule

__all__ = ["PPOModule", "RLModule"]

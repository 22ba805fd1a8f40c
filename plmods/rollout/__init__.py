from plmods.rollout.dataset import IterationDataset, iteration_loader
from plmods.rollout.group_advantage import GroupRelativeAdvantage, ProcessAdvantage
from plmods.rollout.token_gae import TokenGAE
from plmods.rollout.token_returns import TokenMonteCarloAdvantage

__all__ = ["GroupRelativeAdvantage", "IterationDataset", "ProcessAdvantage", "TokenGAE", "TokenMonteCarloAdvantage", "iteration_loader"]

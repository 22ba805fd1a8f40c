from plmods.rollout.dataset import IterationDataset, iteration_loader
from plmods.rollout.group_advantage import GroupRelativeAdvantage, ProcessAdvantage

__all__ = ["GroupRelativeAdvantage", "IterationDataset", "ProcessAdvantage", "iteration_loader"]

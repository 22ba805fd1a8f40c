from plmods.rollout.dataset import IterationDataset, iteration_loader

__all__ = ["IterationDataset", "iteration_loader"]

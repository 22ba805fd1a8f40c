from plmods.callbacks.progress import RLProgressBar

__all__ = ["RLProgressBar"]

from plmods.callbacks.kl_adaptive import AdaptiveKL, next_kl_coef
from plmods.callbacks.progress import RLProgressBar

__all__ = ["AdaptiveKL", "RLProgressBar", "next_kl_coef"]

from plmods.callbacks.kl_adaptive import AdaptiveKL, next_kl_coef
from plmods.callbacks.progress import RLProgressBar
from plmods.callbacks.ref_policy_sync import RefPolicySync, mix_into

__all__ = ["AdaptiveKL", "RLProgressBar", "RefPolicySync", "mix_into", "next_kl_coef"]

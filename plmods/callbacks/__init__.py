from plmods.callbacks.kl_adaptive import AdaptiveKL, next_kl_coef
from plmods.callbacks.progress import RLProgressBar
from plmods.callbacks.rank_consistency import RankConsistency
from plmods.callbacks.ref_policy_sync import RefPolicySync, mix_into
from plmods.callbacks.sft_warmup import SFTWarmup

__all__ = ["AdaptiveKL", "RLProgressBar", "RankConsistency", "RefPolicySync", "SFTWarmup", "mix_into", "next_kl_coef"]

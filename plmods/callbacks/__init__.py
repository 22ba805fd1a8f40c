from plmods.callbacks.curves import Curves, plot_curves
from plmods.callbacks.episode_video import EpisodeVideo
from plmods.callbacks.kl_adaptive import AdaptiveKL, next_kl_coef
from plmods.callbacks.progress import RLProgressBar
from plmods.callbacks.rank_consistency import RankConsistency
from plmods.callbacks.ref_policy_sync import RefPolicySync, mix_into
from plmods.callbacks.sft_warmup import SFTWarmup

__all__ = ["AdaptiveKL", "Curves", "EpisodeVideo", "RLProgressBar", "RankConsistency", "RefPolicySync", "SFTWarmup", "mix_into", "next_kl_coef", "plot_curves"]

"""torchrl's ``GRPOLoss`` on a memory-bounded response scorer, with the KL to the reference averaged
over response tokens and its coefficient beta held by the loss.

The clipped objective of GRPO (seed 003; DeepSeekMath) and of PPO is the same per token::

    L = -E[ min(ratio_t A_t, clip(ratio_t, 1 - eps_low, 1 + eps_high) A_t) ] + beta * KL_k3(pi || pi_ref)
    ratio_t = pi_theta(o_t | q, o_<t) / pi_old(o_t | q, o_<t)

so GRPO, REINFORCE (one on-policy pass: ratio = 1, the clip never binds and the gradient is
-A grad log pi) and PPO-LM (``ppo_lm.py`` adds the critic) share this loss; they differ in their
advantages. ``MaskedGRPOLoss`` keeps torchrl's clipped objective, asymmetric clip, aggregation,
entropy bonus and k3 KL, and changes four things:

1. Current log-probs come from ``plmods.models.scorer.ResponseScorer`` (the LM's hidden states,
   then its head over chunks of valid tokens: never ``[N, T, V]`` logits) instead of torchrl's
   ``TransformersWrapper``, whose generate path forces the first token's log-prob to 0.
2. **KL averaging (a torchrl 0.14.1 bug).** ``GRPOLoss._kl_to_ref`` takes a plain mean over every
   position of the padded tensor, prompt and padding included, so the effective beta shrinks
   with prompt length (0.119 reported vs 0.773 over response tokens in one probe). Here the k3
   KL ``expm1(d) - d``, d = ref - cur (``plmods.algos.kl.k3``), is aggregated over response tokens
   like the objective. Pinned by ``tests/unit/test_grpo_loss.py``.
3. The logged ``entropy``, ``clip_fraction`` and ``kl_approx`` are response-token means (upstream
   dilutes them the same way); ``kl_approx`` is k3 of the ratio, as PPO's ``approx_kl`` here.
4. **beta is a buffer of the loss** (``kl_coef``), its one owner: checkpointed once in the state
   dict, read by the ``AdaptiveKL`` protocol through the module. torchrl keeps it as a plain float.
   ``kl_penalty="loss"`` adds beta * k3 to the loss (GRPO); ``"reward"`` adds no term: the
   module subtracts beta * (log pi_old - log pi_ref) from every token's reward instead (k1, as
   RLOO and RLHF's PPO do), reading beta from here.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from tensordict import TensorDictBase
from torchrl.objectives.llm import GRPOLoss

from plmods.algos.kl import k3
from plmods.errors import require
from plmods.models.scorer import ResponseScorer, token_scores

__all__ = ["MaskedGRPOLoss", "AGGREGATIONS", "KL_PENALTIES", "ResponseScorer", "selective_log_softmax"]

# our names -> torchrl's; torchrl calls the per-completion mean "prompt_mean"; sequence_sum
# (REINFORCE's -log pi(o) (R - b), log pi(o) the sum over the completion's tokens) is ours
AGGREGATIONS = {"token_mean": "token_mean", "sequence_mean": "prompt_mean", "sequence_sum": "sequence_sum"}
KL_PENALTIES = ("loss", "reward")


def selective_log_softmax(logits: torch.Tensor, tokens: torch.Tensor, rows_per_chunk: int = 8) -> torch.Tensor:
    """``log_softmax(logits)[..., tokens]`` ``[N, T]`` from logits ``[N, T, V]`` without a second
    ``[N, T, V]`` tensor: the log-normaliser (logsumexp) is taken ``rows_per_chunk`` rows at a time."""
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # [N, T]
    norms = torch.cat([chunk.logsumexp(-1) for chunk in logits.split(rows_per_chunk)], 0) if logits.shape[0] else picked
    return picked - norms


class _ScoredTokens:
    """What torchrl's ``GRPOLoss`` reads from a distribution: the mask of valid tokens (the
    scorer computed log-probs and entropies itself)."""

    def __init__(self, mask: torch.Tensor, entropy: torch.Tensor | None) -> None:
        self.mask = mask
        self.token_entropy = entropy


class MaskedGRPOLoss(GRPOLoss):
    """The clipped policy-gradient loss of GRPO / REINFORCE / PPO on language models.

    Reads a batch with ``input_ids``, ``attention_mask`` ``[N, P + T]``, ``response_tokens``,
    ``response_mask``, ``old_log_probs``, ``advantage`` ``[N, T, 1]`` and, with a KL term,
    ``ref_log_probs`` ``[N, T]``.

    Args:
        scorer: the policy's ``ResponseScorer`` (``ResponseScores`` of the response tokens).
        clip_epsilon: ratio clip (lower side, and upper side unless ``clip_epsilon_high``).
        clip_epsilon_high: upper clip of DAPO's clip-higher (null: symmetric).
        kl_coef: beta, the KL-to-reference coefficient (0: no reference policy at all).
        kl_penalty: where the KL enters: ``loss`` (beta * k3, GRPO) or ``reward`` (-beta * k1 per
            token, RLOO / RLHF PPO).
        aggregation: ``token_mean`` (all response tokens of the batch), ``sequence_mean``
            (per-completion mean, then mean: the 1/|o_i| of the GRPO objective) or
            ``sequence_sum`` (per-completion sum, then mean: REINFORCE's log pi(o) of the whole
            completion, as TRL's RLOO).
        entropy_coeff: entropy bonus weight (0: off; the entropy is logged either way).
    """

    def __init__(
        self,
        scorer: ResponseScorer,
        *,
        clip_epsilon: float | tuple[float, float] = 0.2,
        clip_epsilon_high: float | None = None,
        kl_coef: float = 0.0,
        kl_penalty: Literal["loss", "reward"] = "loss",
        aggregation: str = "token_mean",
        entropy_coeff: float = 0.0,
        **deprecated,
    ) -> None:
        kl_coef, aggregation = _deprecated_arguments(deprecated, kl_coef, aggregation)
        low, high = clip_epsilon if isinstance(clip_epsilon, (tuple, list)) else (clip_epsilon, clip_epsilon_high or clip_epsilon)
        require(0 < low < 1, f"clip_epsilon must be in (0, 1), got {low}.")
        require(high > 0, f"clip_epsilon_high must be > 0 or null, got {high}.")
        require(kl_coef >= 0, f"kl_coef must be >= 0, got {kl_coef}.")
        require(kl_penalty in KL_PENALTIES, f"kl_penalty must be one of {', '.join(KL_PENALTIES)}, got {kl_penalty!r}.")
        require(aggregation in AGGREGATIONS, f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}.")
        require(entropy_coeff >= 0, f"entropy_coeff must be >= 0, got {entropy_coeff}.")
        self.kl_penalty = kl_penalty
        super().__init__(
            scorer, clip_epsilon=(low, high), aggregation=AGGREGATIONS[aggregation], entropy_bonus=entropy_coeff > 0,
            entropy_coeff=entropy_coeff, kl_to_ref_coeff=None,
        )  # fmt: skip
        self.register_buffer("kl_coef", torch.tensor(float(kl_coef)))
        self.set_keys(action="response_tokens", sample_log_prob="old_log_probs", ref_log_probs="ref_log_probs", advantage="advantage")

    # torchrl reads the coefficient of its KL term from this attribute on every call
    @property
    def kl_to_ref_coeff(self) -> float | None:
        if self.kl_penalty != "loss" or "kl_coef" not in self._buffers:
            return None
        return float(self.kl_coef)

    @kl_to_ref_coeff.setter
    def kl_to_ref_coeff(self, value: float | None) -> None:
        if value is not None:  # (torchrl's __init__ assigns None before the buffer exists)
            self.kl_coef.fill_(float(value))

    @property
    def needs_reference(self) -> bool:
        """Whether a reference policy is needed: a KL term, in the loss or in the reward."""
        return float(self.kl_coef) > 0

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """torch's signature: torchrl 0.14's ``LossModule.named_parameters`` drops
        ``remove_duplicate``, which torch's distributed state-dict helpers pass (an FSDP checkpoint
        written whole, ``save_distributed_checkpoint=false``, failed with a TypeError). torchrl's
        filter of ``_target`` parameters is kept (``tests/unit/test_grpo_loss.py``)."""
        for name, param in torch.nn.Module.named_parameters(self, prefix, recurse, remove_duplicate):
            if not name.startswith("_target"):
                yield name, param

    def _get_cur_log_prob(self, tensordict: TensorDictBase):
        mask = tensordict["response_mask"]  # [N, T]
        scores = self.actor_network(
            tensordict["input_ids"], tensordict["attention_mask"], tensordict["response_tokens"], mask,
            tensordict.get("prompt_group", None), entropy=True, entropy_grad=self.entropy_bonus,
        )  # fmt: skip
        self._scores = scores  # the hidden states, for a critic on the same trunk (MaskedPPOLoss)
        return scores.log_probs, _ScoredTokens(mask, scores.entropy), False

    def _log_weight(self, tensordict: TensorDictBase, adv_shape: torch.Size):
        log_weight, dist, kl_approx, mask = super()._log_weight(tensordict, adv_shape)
        with torch.no_grad():
            lw = log_weight.squeeze(-1)[mask]  # [tokens]
            low, high = self._clip_bounds
            self._approx_kl = k3(lw).mean() if lw.numel() else lw.new_zeros(())
            self._clip_fraction = ((lw < low) | (lw > high)).float().mean() if lw.numel() else lw.new_zeros(())
            entropy = dist.token_entropy
            self._entropy = entropy[mask].mean() if entropy is not None and lw.numel() else lw.new_zeros(())
        return log_weight, dist, kl_approx, mask

    def _get_entropy(self, dist: _ScoredTokens, adv_shape: torch.Size) -> torch.Tensor:
        return dist.token_entropy.unsqueeze(-1)  # [N, T, 1], 0 where masked

    def _aggregate_loss_value(self, value: torch.Tensor, mask: torch.Tensor, tensordict: TensorDictBase | None = None) -> torch.Tensor:
        """torchrl's aggregations plus ``sequence_sum``: the masked sum over each completion's
        tokens ``value [N, T, 1]``, then the mean over completions."""
        if self.aggregation != "sequence_sum":
            return super()._aggregate_loss_value(value, mask, tensordict)
        return (value * mask.unsqueeze(-1).to(value.dtype)).sum(-2).mean(0)

    def _kl_to_ref(
        self,
        tensordict: TensorDictBase,
        key=("next", "ref_log_probs"),
        ref_log_prob: torch.Tensor | None = None,
        coeff: float | None = None,
        mask: torch.Tensor | None = None,
        dist=None,
    ):
        coeff = self.kl_to_ref_coeff if coeff is None else coeff
        cur_log_prob = tensordict.get("_cur_log_prob")  # [N, T]
        if ref_log_prob is None:
            ref_log_prob = tensordict.get(key)
        if ref_log_prob.shape != cur_log_prob.shape:
            raise ValueError(f"{key} has shape {tuple(ref_log_prob.shape)}, expected {tuple(cur_log_prob.shape)}.")
        if mask is None:
            mask = torch.ones_like(cur_log_prob, dtype=torch.bool)
        diff = torch.where(mask, ref_log_prob - cur_log_prob, 0.0)  # [N, T]
        kl = self._aggregate_loss_value(k3(diff).unsqueeze(-1), mask).reshape(())  # response tokens only
        return coeff * kl, kl

    def forward(self, tensordict: TensorDictBase):
        out = super().forward(tensordict)
        out.kl_approx = self._approx_kl
        out.clip_fraction = self._clip_fraction
        out.entropy = self._entropy
        return out


def _deprecated_arguments(deprecated: dict, kl_coef: float, aggregation: str) -> tuple[float, str]:
    """The 0.1 keyword names (torchrl's), kept for one release."""
    renames = {"kl_to_ref_coeff": "kl_coef", "entropy_bonus": "entropy_coeff > 0"}
    for name in deprecated:
        require(name in renames, f"MaskedGRPOLoss has no argument {name!r}.")
        warnings.warn(f"MaskedGRPOLoss({name}=...) is deprecated: use {renames[name]}.", DeprecationWarning, stacklevel=3)
    if deprecated.get("kl_to_ref_coeff") is not None:
        kl_coef = deprecated["kl_to_ref_coeff"]
    if aggregation == "prompt_mean":
        warnings.warn("aggregation='prompt_mean' is deprecated: use 'sequence_mean'.", DeprecationWarning, stacklevel=3)
        aggregation = "sequence_mean"
    return float(kl_coef), aggregation


# the scorer moved to plmods.models.scorer; token_scores is its chunk computation
__all__ += ["token_scores"]

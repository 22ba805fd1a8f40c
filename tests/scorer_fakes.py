"""Fakes of ``plmods.models.scorer.ResponseScorer`` for hand-computed loss tests."""

from __future__ import annotations

import torch
from torch import nn

from plmods.models.scorer import ResponseScores


class TableScorer(nn.Module):
    """A fixed logit table ``[N, T, V]`` with a gradient, scored as ``ResponseScorer`` scores:
    log-probs and entropies of the response tokens (0 where masked); hidden states = the logits."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, input_ids, attention_mask, tokens, mask, prompt_group=None, entropy=False, entropy_grad=False):
        log_p = self.logits.log_softmax(-1)  # [N, T, V]
        picked = log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).masked_fill(~mask, 0.0)
        ent = None
        if entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                ent = -(log_p.exp() * log_p).sum(-1).masked_fill(~mask, 0.0)
        return ResponseScores(picked, ent, self.logits)

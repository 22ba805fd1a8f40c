"""Per-token log-probs (and hidden states) of sampled responses under a causal LM, memory-bounded.

``ResponseScorer`` turns a batch of ``[prompt | response]`` rows into, for every response token
k, the hidden state ``h_k`` of the position that predicts it and ``log pi(token_k | prefix) =
log_softmax(head(h_k) / T)[token_k]``, where ``T`` is the sampling temperature.

**No ``[N, T, V]`` logits.** The model's own forward runs with two hooks on its output embedding
(``get_output_embeddings()``, the LM head): the pre-hook keeps the head's input (the final hidden
states) and hands the head an empty slice, so the model never builds a logits tensor; the
forward hook returns, in place of the head's output, the scores computed here: the head applied to
the *valid* response tokens only, ``logits_chunk_size`` tokens at a time, each chunk under
activation checkpointing (its ``[chunk, V]`` logits are freed after the forward and recomputed in
the backward). Peak logits memory is ``logits_chunk_size x V`` for any number of rows and any
length (TRL's async GRPO computes its log-probs over chunks of positions for the same reason).
The scores leave the model as its output, so FSDP's root hooks gather the head for the backward
and reduce its gradient, PEFT's adapters and the attention backend run as usual. Written here
because transformers and torchrl both materialise the logits of every kept position.

A model whose logits are not ``head(h)`` (Gemma's final softcapping, Cohere's ``logit_scale``,
Granite's ``logits_scaling``) is found once (``check_head``): the scorer then keeps the model's own
logits (still micro-batched, no longer chunked) and says so in the log.

**Shared prompts.** GRPO-style rounds score G completions of each prompt. With ``prompt_group``
(a group id per row) the prompt runs once per group, with gradients, and its key/value cache is
gathered to every row of the group before the responses run on top of it: B * P + N * T tokens
instead of N * (P + T). Gradients flow through the gathered cache into the prompt computation,
so log-probs and their gradients equal the plain forward's (tested to 1e-5).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["ResponseScorer", "ResponseScores", "token_scores"]

log = logging.getLogger(__name__)


@dataclass
class ResponseScores:
    """``log_probs`` ``[N, T]`` (0 where masked), ``entropy`` ``[N, T]`` (or None) and ``hidden``
    ``[N, T, H]``: the hidden state of the position that predicts each response token."""

    log_probs: torch.Tensor
    entropy: torch.Tensor | None
    hidden: torch.Tensor


def token_scores(
    head: nn.Module, hidden: torch.Tensor, tokens: torch.Tensor, temperature: float, entropy: bool = False, entropy_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log_softmax(head(hidden) / temperature)[tokens]`` ``[K]`` (and the entropy ``[K]``,
    detached unless ``entropy_grad``) for hidden states ``[K, H]``: the ``[K, V]`` logits exist
    only inside this call."""
    logits = head(hidden).float() / temperature  # [K, V]
    log_norm = logits.logsumexp(-1)  # [K]
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - log_norm
    if not entropy:
        return picked, None
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        # H = log Z - sum_v p_v * logit_v
        return picked, log_norm - (logits.softmax(-1) * logits).sum(-1)


class _HeadHooks:
    """The LM head's two hooks for one forward (see the module docstring). ``tokens`` / ``mask``
    ``[N, K]``: the tokens the K kept positions predict; None keeps the model's own logits (the
    hidden states are captured either way)."""

    def __init__(self, scorer: ResponseScorer, head: nn.Module, tokens: torch.Tensor | None, mask: torch.Tensor | None) -> None:
        self.scorer, self.head, self.tokens, self.mask = scorer, head, tokens, mask
        self.hidden: torch.Tensor | None = None
        self._inside = False  # the head called from inside the hook: run it plainly

    def __enter__(self) -> _HeadHooks:
        self._handles = [self.head.register_forward_pre_hook(self._pre), self.head.register_forward_hook(self._post)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def _pre(self, module: nn.Module, args: tuple) -> tuple | None:
        if self._inside:
            return None
        self.hidden = args[0]
        return None if self.tokens is None else (args[0][..., :0, :], *args[1:])

    def _post(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if self._inside or self.tokens is None:
            return None
        self._inside = True
        try:
            return self.scorer._chunked(self.hidden, self.tokens, self.mask)  # [N, K, 2]: log-prob, entropy
        finally:
            self._inside = False


class ResponseScorer(nn.Module):
    """Response-token log-probs of a causal LM (``model``: a transformers ``*ForCausalLM``, a PEFT
    model around one, or a base model without a head, whose hidden states are all it gives).

    Args:
        model: the language model.
        temperature: the sampling temperature (log-probs of softmax(logits / temperature)).
        share_prompts: run each prompt group's prompt once (off under gradient checkpointing:
            transformers then refuses the prompt's cache in training).
        logits_chunk_size: response tokens whose logits exist at once (peak ``chunk x V``).
    """

    def __init__(self, model: nn.Module, temperature: float = 1.0, share_prompts: bool = True, logits_chunk_size: int = 256) -> None:
        super().__init__()
        if logits_chunk_size < 1:
            raise ValueError(f"logits_chunk_size must be >= 1, got {logits_chunk_size}.")
        self.model = model
        self.temperature = temperature
        self.share_prompts = share_prompts
        self.logits_chunk_size = logits_chunk_size
        self.chunked_head = True  # False after check_head found logits that are not head(h)
        self._entropy = (False, False)  # (compute, with gradient), for the forward in progress

    # ------------------------------------------------------------------ the model's parts
    @property
    def head(self) -> nn.Module | None:
        get = getattr(self.model, "get_output_embeddings", None)
        return get() if get is not None else None

    def _cache_argument(self) -> str:
        if not hasattr(self, "_cache_name"):
            from plmods.models.hf import cache_keyword

            self._cache_name = cache_keyword(self.model)
        return self._cache_name

    def _run(self, keep: int | None, tokens: torch.Tensor | None, mask: torch.Tensor | None, **inputs):
        """One forward of the model over the last ``keep`` positions (all when None):
        ``(hidden [N, K, H], scores [N, K, 2] or None, logits [N, K, V] or None)``. With
        ``tokens`` and the chunked head, the scores of those tokens replace the logits."""
        head = self.head
        if head is None:  # a base model: its last hidden state is the output
            hidden = self.model(**inputs).last_hidden_state
            return (hidden if keep is None else hidden[:, -keep:]), None, None
        chunk = tokens if self.chunked_head else None
        with _HeadHooks(self, head, chunk, mask) as hooks:
            out = self.model(**inputs, logits_to_keep=keep or 0).logits
        return hooks.hidden, (out if chunk is not None else None), (None if chunk is not None else out)

    def _chunked(self, hidden: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[N, K, 2]``: log-prob and entropy of ``tokens`` where ``mask`` (0 elsewhere), the head
        over ``logits_chunk_size`` valid tokens at a time."""
        entropy, entropy_grad = self._entropy
        flat_hidden, flat_tokens = hidden[mask], tokens[mask]  # [Kv, H], [Kv]: valid tokens only
        picked, entropies = [], []
        for first in range(0, flat_tokens.shape[0], self.logits_chunk_size):
            args = (self.head, flat_hidden[first : first + self.logits_chunk_size], flat_tokens[first : first + self.logits_chunk_size],
                    self.temperature, entropy, entropy_grad)  # fmt: skip
            if torch.is_grad_enabled() and hidden.requires_grad:
                lp, e = checkpoint(token_scores, *args, use_reentrant=False)  # the [chunk, V] logits: recomputed in backward
            else:
                lp, e = token_scores(*args)
            picked.append(lp)
            entropies.append(e if e is not None else torch.zeros_like(lp))
        scores = torch.zeros(*tokens.shape, 2, dtype=torch.float32, device=hidden.device)
        if picked:
            scores = scores.masked_scatter(mask.unsqueeze(-1), torch.stack([torch.cat(picked), torch.cat(entropies)], -1))
        return scores

    # ------------------------------------------------------------------ hidden states and scores
    def _score(self, input_ids, attention_mask, tokens, mask, prompt_group):
        """``(hidden [N, T, H], scores [N, T, 2] or None, logits [N, T, V] or None)`` at the
        positions predicting the T response tokens. ``input_ids`` are left-padded prompts followed
        by right-padded responses; positions are counted over the attention mask as ``generate``
        counts them."""
        T = tokens.shape[-1]
        if prompt_group is not None and self.share_prompts:
            return self._shared_prompt_score(input_ids, attention_mask, tokens, mask, prompt_group)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)  # [N, P + T]
        # T + 1 kept positions: position k predicts response token k, the last one nothing
        pad = torch.zeros_like(tokens[:, :1])
        hidden, scores, logits = self._run(
            T + 1, torch.cat([tokens, pad], 1), torch.cat([mask, pad.bool()], 1), input_ids=input_ids, attention_mask=attention_mask,
            position_ids=position_ids, use_cache=False,
        )  # fmt: skip
        return hidden[:, :-1], (None if scores is None else scores[:, :-1]), (None if logits is None else logits[:, :-1])

    def _shared_prompt_score(self, input_ids, attention_mask, tokens, mask, prompt_group):
        from transformers import DynamicCache

        T = tokens.shape[-1]
        P = input_ids.shape[1] - T
        _, inverse = torch.unique(prompt_group, return_inverse=True)  # row -> unique prompt
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        first = torch.full((int(inverse.max()) + 1,), input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        first = first.scatter_reduce(0, inverse, rows, "amin")  # [B]: the first row of each prompt
        prompt_mask = attention_mask[first, :P]  # [B, P]
        cache = DynamicCache()
        # the prompt's last position predicts response token 0: its [B, 1, V] logits are the
        # model's own (B x V floats), gathered to the rows below
        head_hidden, _, head_logits = self._run(
            1, None, None, input_ids=input_ids[first, :P], attention_mask=prompt_mask,
            position_ids=(prompt_mask.cumsum(-1) - 1).clamp_min(0), use_cache=True, **{self._cache_argument(): cache},
        )  # fmt: skip
        cache.batch_select_indices(inverse)  # [B, ...] -> [N, ...], differentiable gather
        hidden = [head_hidden[inverse]]
        scores, logits = None, None
        if head_logits is not None:
            logits = head_logits[inverse]  # [N, 1, V]
            if self.chunked_head:
                scores = self._from_logits(logits, tokens[:, :1], mask[:, :1])
                logits = None
        if T > 1:
            start = attention_mask[:, :P].sum(-1, keepdim=True)  # [N, 1] valid prompt tokens
            rest_hidden, rest_scores, rest_logits = self._run(
                None, tokens[:, 1:], mask[:, 1:], input_ids=input_ids[:, P : P + T - 1], attention_mask=attention_mask[:, : P + T - 1],
                position_ids=start + torch.arange(T - 1, device=input_ids.device), use_cache=True, **{self._cache_argument(): cache},
            )  # fmt: skip  [N, T - 1, ...]: predict response tokens 1..T-1
            hidden.append(rest_hidden)
            scores = None if scores is None else torch.cat([scores, rest_scores], 1)
            logits = None if logits is None else torch.cat([logits, rest_logits], 1)
        return torch.cat(hidden, 1), scores, logits

    def _from_logits(self, logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[N, K, 2]`` scores from the model's own logits ``[N, K, V]``."""
        entropy, entropy_grad = self._entropy
        picked, ent = token_scores(nn.Identity(), logits.flatten(0, 1), tokens.flatten(), self.temperature, entropy, entropy_grad)
        ent = torch.zeros_like(picked) if ent is None else ent
        return torch.stack([picked, ent], -1).view(*tokens.shape, 2) * mask.unsqueeze(-1)

    def hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
        prompt_group: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """The hidden states ``[N, T, H]`` of the positions predicting ``tokens`` (a critic on the
        policy's trunk reads them)."""
        return self(input_ids, attention_mask, tokens, mask, prompt_group).hidden

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        prompt_group: torch.Tensor | None = None,
        entropy: bool = False,
        entropy_grad: bool = False,
    ) -> ResponseScores:
        """Scores of ``tokens`` ``[N, T]`` where ``mask``; 0 elsewhere. ``entropy``: also the
        entropy of each predicted distribution (``entropy_grad``: differentiable, for a bonus)."""
        self._entropy = (entropy, entropy_grad)
        hidden, scores, logits = self._score(input_ids, attention_mask, tokens, mask, prompt_group)
        if self.head is None:  # a trunk without a head: hidden states only
            return ResponseScores(hidden.new_zeros(tokens.shape, dtype=torch.float32), None, hidden)
        if scores is None:  # the model's own logits (check_head): still only [N, T, V], micro-batched
            scores = self._from_logits(logits, tokens, mask)
        return ResponseScores(scores[..., 0], scores[..., 1] if entropy else None, hidden)

    @torch.no_grad()
    def log_probs(self, batch: TensorDictBase, micro_batch_size: int | None = None) -> torch.Tensor:
        """Per-token log-probs ``[N, T]`` of ``batch["response_tokens"]`` (0 where masked), no grad,
        ``micro_batch_size`` rows at a time (whole prompt groups stay together when rows of a group
        are adjacent)."""
        n = batch.shape[0]
        size = micro_batch_size or max(n, 1)
        out = [
            self(m["input_ids"], m["attention_mask"], m["response_tokens"], m["response_mask"], m.get("prompt_group", None)).log_probs
            for m in (batch[first : first + size] for first in range(0, n, size))
        ]
        return torch.cat(out, 0) if out else batch["response_tokens"].new_zeros(0, batch["response_tokens"].shape[-1], dtype=torch.float32)

    # ------------------------------------------------------------------ the head check
    @torch.no_grad()
    def check_head(self) -> bool:
        """Whether ``head(h)`` reproduces the model's own logits, on a 4-token input; if not, the
        scorer uses the model's logits from here on. Returns ``chunked_head``."""
        head = self.head
        if head is None:
            return self.chunked_head
        first = next(self.model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        vocab = getattr(getattr(self.model, "config", None), "vocab_size", None) or 2
        ids = torch.arange(1, 5, device=device).unsqueeze(0) % vocab
        with _HeadHooks(self, head, None, None) as hooks:
            logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits.float()
            hooks._inside = True  # our own call below: plain
            ours = head(hooks.hidden).float()
        scale = logits.abs().max().clamp_min(1.0)
        if not torch.allclose(ours, logits, rtol=0, atol=1e-3 * float(scale)):
            log.warning(
                "%s: the logits are not head(hidden states); response log-probs use the model's own logits "
                "(micro-batched, not chunked)", type(self.model).__name__,
            )  # fmt: skip
            self.chunked_head = False
        return self.chunked_head

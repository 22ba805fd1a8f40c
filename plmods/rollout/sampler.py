"""GRPO's sampler: prompts -> groups of completions with masks and the sampler's own log-probs.

``GroupSampler.sample(model, prompts, repeats)`` returns a TensorDict ``[N]`` (N = prompts x
repeats, the repeats of a prompt adjacent):

- ``input_ids`` / ``attention_mask`` ``[N, P + T]``: left-padded formatted prompt, then response;
- ``response_tokens`` / ``response_mask`` ``[N, T]``: the response up to and including its first
  eos (the mask carries the truth, so pad == eos is fine; tokens after the end become pad);
- ``old_log_probs`` ``[N, T]`` (``log_probs=True``): log pi_old of each sampled token, recorded
  while sampling by ``SampledLogProbs``, so no second forward and no ``[N, T, V]`` tensor: the
  processor keeps one ``[N, V]`` step at a time (``generate(output_logits=True)`` kept every step:
  ~40 GB for 128 completions x 512 tokens x a 152k vocabulary).

Sampling is plain ancestral sampling from softmax(logits / temperature): the generation config is
built from these settings only, with every filter neutral (top_k = 0, top_p = 1, no repetition
penalty), so the distribution sampled is the one the loss scores (tested against the scorer).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from plmods.models.hf import cache_keyword

__all__ = ["GroupSampler", "SampledLogProbs", "response_mask"]


class SampledLogProbs(LogitsProcessor):
    """Divides the logits by the temperature (generate itself runs at temperature 1, so nothing
    rescales after this) and records the log-prob of each sampled token.

    Called once per generated token with the sequences so far: the token sampled at the previous
    call is now the last column of ``input_ids``, so its log-prob is gathered from the stored
    ``[N, V]`` log-softmax. ``finish`` gathers the last one."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.steps: list[torch.Tensor] = []
        self._last: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._last is not None:
            self.steps.append(self._last.gather(-1, input_ids[:, -1:]))
        scores = scores / self.temperature
        self._last = scores.float().log_softmax(-1)
        return scores

    def finish(self, sequences: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """``[N, T]`` log-probs of the last ``num_tokens`` tokens of ``sequences``."""
        if self._last is not None:
            self.steps.append(self._last.gather(-1, sequences[:, -1:]))
            self._last = None
        if not self.steps:
            return torch.zeros(sequences.shape[0], 0, device=sequences.device)
        return torch.cat(self.steps, -1)[:, :num_tokens]


def response_mask(response: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """True up to and including the first eos of each row (everything when there is none)."""
    is_eos = response == eos_token_id
    return (is_eos.cumsum(-1) - is_eos.long()) == 0


class GroupSampler:
    """Samples completions of formatted prompts.

    Args:
        lm: the model factory (``HFCausalLM``): its tokenizer and prompt format.
        max_new_tokens: completion length limit (T).
        temperature: sampling temperature.
        share_prefill: run each prompt's prefix once and share its cache across the prompt's
            repeats (the same samples, G times less prefill).
    """

    def __init__(self, lm, max_new_tokens: int, temperature: float = 1.0, share_prefill: bool = True) -> None:
        self.lm = lm
        self.share_prefill = share_prefill
        self.tokenizer = lm.tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        tok = self.tokenizer
        self.generation_config = GenerationConfig(
            do_sample=True,
            temperature=1.0,  # SampledLogProbs divides by the temperature
            top_k=0,
            top_p=1.0,
            typical_p=1.0,
            min_p=0.0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
            repetition_penalty=1.0,
            encoder_repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            min_new_tokens=0,
            renormalize_logits=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
            return_dict_in_generate=True,
        )

    @torch.no_grad()
    def sample(
        self, model: torch.nn.Module, prompts: list[str], repeats: int = 1, log_probs: bool = False, synced_gpus: bool | None = None
    ) -> TensorDict:
        """``repeats`` completions per prompt; ``synced_gpus`` is passed to ``generate`` when set
        (False for a sharded model whose weights were gathered for the whole call)."""
        prompt_ids, prompt_mask = self.lm.encode_prompts(prompts)
        device = next(model.parameters()).device
        prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
        cache_name = cache_keyword(model)
        cache = self._shared_prefill(model, prompt_ids, prompt_mask, repeats, cache_name) if repeats > 1 and self.share_prefill else None
        prompt_ids = prompt_ids.repeat_interleave(repeats, 0)  # [N, P]
        prompt_mask = prompt_mask.repeat_interleave(repeats, 0)
        recorder = SampledLogProbs(self.temperature)
        out = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            generation_config=self.generation_config,
            logits_processor=LogitsProcessorList([recorder]),
            **({} if cache is None else {cache_name: cache}),
            **({} if synced_gpus is None else {"synced_gpus": synced_gpus}),
        )
        response = out.sequences[:, prompt_ids.shape[1] :]  # [N, T]
        mask = response_mask(response, self.tokenizer.eos_token_id)
        response = response.masked_fill(~mask, self.tokenizer.pad_token_id)
        batch = TensorDict(
            input_ids=torch.cat([prompt_ids, response], -1),
            attention_mask=torch.cat([prompt_mask, mask.long()], -1),
            response_tokens=response,
            response_mask=mask,
            batch_size=[response.shape[0]],
            device=device,
        )
        if log_probs:
            batch["old_log_probs"] = recorder.finish(out.sequences, response.shape[1]).masked_fill(~mask, 0.0)
        return batch

    @staticmethod
    def _shared_prefill(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, repeats: int, cache_name: str):
        """The key/value cache of every prompt but its last token, computed once per prompt and
        repeated to its ``repeats`` rows: generate then runs only the last prompt token and the
        response per row (the G completions of a prompt share the same prefix)."""
        from transformers import DynamicCache

        if prompt_ids.shape[1] < 2:
            return None
        cache = DynamicCache()
        head = prompt_mask[:, :-1]
        model(
            input_ids=prompt_ids[:, :-1],
            attention_mask=head,
            position_ids=(head.cumsum(-1) - 1).clamp_min(0),
            use_cache=True,
            logits_to_keep=1,
            **{cache_name: cache},
        )
        cache.batch_repeat_interleave(repeats)
        return cache

    def decode(self, batch: TensorDict) -> list[str]:
        return self.tokenizer.batch_decode(batch["response_tokens"], skip_special_tokens=True)

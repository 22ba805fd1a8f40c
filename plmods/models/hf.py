"""Any local transformers causal LM as a GRPO policy: ``HFCausalLM`` (``model=hf_causal_lm``).

A factory of ``(model, tokenizer)`` from a local ``save_pretrained`` directory (never a hub name:
nothing is downloaded at run time). The tokenizer is loaded when the factory is built, so every
setting that depends on it (chat template, pad token) is checked before any work starts; the model
is built later, by ``build()`` (``GRPOModule.configure_model``), so a sharded strategy can wrap it.

- **Prompts** go through the tokenizer's own chat template (``chat_template=True``, with an
  optional system prompt) or are used raw (``False``).
- **pad == eos is fine** (SmolLM2, Qwen, Llama instruct models): masks carry which positions are
  real; a response ends at its first eos. A tokenizer without a pad token pads with eos.
- **A clean generation config**: the model's own ``generation_config`` (``repetition_penalty``,
  ``top_k`` ...) would otherwise fill every sampling setting plmods leaves unset, and the sampled
  distribution would no longer be the one the loss scores. ``build()`` replaces it with one that
  holds only the special token ids.
- **LoRA** through PEFT (``lora.r > 0``): see ``plmods.models.lora``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from plmods.errors import ConfigError, require

__all__ = ["HFCausalLM", "DTYPES", "cache_keyword"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LORA_DEFAULTS = {"r": 0, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "dropout": 0.0}


class HFCausalLM:
    """Factory of a transformers causal LM and its tokenizer, from a local directory.

    Args:
        path: a local directory with a saved transformers model and tokenizer.
        dtype: parameter dtype: ``float32``, ``bfloat16`` or ``float16``.
        chat_template: wrap each prompt in the tokenizer's chat template (a user turn and the
            assistant header); false sends the raw prompt.
        system_prompt: a system message placed before the user turn (chat template only).
        gradient_checkpointing: recompute activations in the backward pass (less memory, ~30% slower).
        attn_implementation: transformers' attention backend (``eager``, ``sdpa``, ...); null:
            transformers' default.
        lora: ``{r, alpha, target_modules, dropout}``; ``r = 0`` trains every weight, ``r > 0``
            trains LoRA adapters of rank r through PEFT (the reference is the frozen base).
        save_merged: with LoRA, also save the policy with the adapters merged into the weights
            (``<dir>/merged``, loadable by plain transformers) next to the adapter directory.
    """

    def __init__(
        self,
        path: str | None = None,
        dtype: str = "float32",
        chat_template: bool = True,
        system_prompt: str | None = None,
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = None,
        lora: Mapping[str, Any] | None = None,
        save_merged: bool = False,
    ) -> None:
        require(
            path is None or Path(path).expanduser().is_dir(),
            f"path={path!r} is not a local directory. Point it at a saved transformers model "
            "(save_pretrained output); hub names are never downloaded.",
        )
        require(
            path is None or (Path(path).expanduser() / "config.json").is_file(),
            f"path={path!r} holds no config.json: it is not a saved transformers model. Point it at the "
            "directory save_pretrained wrote (config.json, weights and tokenizer files).",
        )
        require(dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
        require(system_prompt is None or chat_template, "system_prompt needs chat_template=true (raw prompts have no system turn).")
        self.path = None if path is None else str(Path(path).expanduser())
        self.dtype = dtype
        self.chat_template = chat_template
        self.system_prompt = system_prompt
        self.gradient_checkpointing = gradient_checkpointing
        self.attn_implementation = attn_implementation
        self.lora = _lora_settings(lora)
        self.save_merged = save_merged
        self.tokenizer = self._load_tokenizer()
        require(
            not chat_template or self.tokenizer.chat_template,
            f"chat_template=true, but the tokenizer at {self.path} has no chat template: set "
            "chat_template=false to send raw prompts, or save a tokenizer that has one.",
        )

    # ------------------------------------------------------------------ tokenizer and prompts
    def _load_tokenizer(self) -> PreTrainedTokenizerBase:
        require(self.path is not None, "path is required (a local transformers directory).")
        tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        require(tokenizer.eos_token_id is not None, f"the tokenizer at {self.path} has no eos token: a response could never end.")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token  # pad == eos: masks say which positions are real
        tokenizer.padding_side = "left"  # generation appends on the right
        return tokenizer

    def format_prompt(self, prompt: str) -> str:
        """The text the model is conditioned on: the chat-formatted user turn plus the assistant
        header, or the raw prompt."""
        if not self.chat_template:
            return prompt
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def demonstration_text(self, prompt: str, completion: str) -> str:
        """A prompt followed by a completion ending in eos: exactly what sampling produces
        (generation stops at eos, whatever the template writes after an assistant turn)."""
        return self.format_prompt(prompt) + completion + self.tokenizer.eos_token

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``(input_ids, attention_mask)`` of the formatted prompts."""
        enc = self.tokenizer([self.format_prompt(p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
        return enc["input_ids"], enc["attention_mask"]

    # ------------------------------------------------------------------ model
    def config_key(self) -> dict[str, Any]:
        """What identifies the initial weights and the prompt format (keys cached SFT warm-ups)."""
        return {k: v for k, v in vars(self).items() if k != "tokenizer"}

    def with_path(self, path: str) -> HFCausalLM:
        """The same settings, loading ``path`` (e.g. a warmed-up policy directory)."""
        other = copy.copy(self)
        other.path = str(path)
        return other

    def _load_model(self, seed: int) -> PreTrainedModel:
        kwargs = {} if self.attn_implementation is None else {"attn_implementation": self.attn_implementation}
        return AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True, dtype=DTYPES[self.dtype], **kwargs)

    def build_base(self, seed: int = 0) -> PreTrainedModel:
        """The full model (no adapters), in eval mode, with a clean generation config."""
        model = self._load_model(seed)
        model.generation_config = GenerationConfig(
            bos_token_id=self.tokenizer.bos_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model.eval()

    def build(self, seed: int = 0) -> PreTrainedModel:
        """The policy: the base model, wrapped with LoRA adapters when ``lora.r > 0``."""
        model = self.build_base(seed)
        if self.lora["r"] > 0:
            from plmods.models.lora import apply_lora

            model = apply_lora(model, **self.lora)
        return model

    def save(self, model: torch.nn.Module, path: str) -> None:
        """The trained policy and tokenizer: a transformers directory (full), or a PEFT adapter
        directory plus, with ``save_merged``, ``<path>/merged`` (LoRA)."""
        if self.lora["r"] > 0:
            from plmods.models.lora import save_adapter

            save_adapter(model, path, merged=self.save_merged)
        else:
            model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        if self.lora["r"] > 0 and self.save_merged:
            self.tokenizer.save_pretrained(Path(path) / "merged")


def _lora_settings(lora: Mapping[str, Any] | None) -> dict[str, Any]:
    settings = dict(LORA_DEFAULTS)
    if lora is None:
        return settings
    unknown = set(lora) - set(LORA_DEFAULTS)
    if unknown:
        raise ConfigError(f"lora has unknown keys {sorted(unknown)}; valid: {', '.join(LORA_DEFAULTS)}.")
    settings.update(lora)
    settings["target_modules"] = list(settings["target_modules"])
    require(int(settings["r"]) >= 0, f"lora.r must be >= 0 (0: no LoRA), got {settings['r']}.")
    require(float(settings["alpha"]) > 0, f"lora.alpha must be > 0, got {settings['alpha']}.")
    require(0 <= float(settings["dropout"]) < 1, f"lora.dropout must be in [0, 1), got {settings['dropout']}.")
    require(bool(settings["target_modules"]), "lora.target_modules must name at least one module (e.g. q_proj).")
    return settings


def cache_keyword(model: torch.nn.Module) -> str:
    """The keyword a transformers model's ``forward``/``generate`` takes for a KV cache: 5.24
    renamed ``past_key_values`` to ``cache`` (the old name warns until 5.40). Read from the
    outermost ``PreTrainedModel`` inside ``model`` (a PEFT or other wrapper passes keywords on)."""
    import inspect

    hf = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), model)
    return "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"

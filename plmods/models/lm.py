"""Causal language models and tokenizers that never touch the hub.

``TinyCausalLM`` builds a small Llama-style model from a config and a character-level tokenizer
with the ``tokenizers`` library (its own pad and eos tokens, a chat template), so tests, the
default demo and benchmarks run offline. ``path=...`` loads any locally saved transformers
checkpoint (model and tokenizer directory, e.g. one written by the SFT warm-up) instead.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from plmods.errors import require
from plmods.models.hf import DTYPES, HFCausalLM

__all__ = ["TinyCausalLM", "char_tokenizer", "CHAT_TEMPLATE"]

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
USER, ASSISTANT = "<user>", "<assistant>"

# One user turn, then the assistant's answer closed by eos (the token SFT and GRPO must learn to
# emit). Kept minimal: every template token is a token the tiny model reads on every sample.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '<user>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<assistant>' + message['content'] + '<eos>' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
)


def char_tokenizer(alphabet: str = string.printable) -> PreTrainedTokenizerFast:
    """One token per character of ``alphabet`` plus pad, eos, bos, unk, user and assistant.

    Built with the ``tokenizers`` library (a WordLevel model over single characters): pad and
    eos are distinct, so padding never strips a real end of answer.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    specials = [PAD, EOS, BOS, UNK, USER, ASSISTANT]
    chars = sorted(set(alphabet) - {"\x0b", "\x0c"})
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        eos_token=EOS,
        bos_token=BOS,
        unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT],
        padding_side="left",  # generation appends on the right
        chat_template=CHAT_TEMPLATE,
    )
    return tok


class TinyCausalLM(HFCausalLM):
    """A small Llama built from this config with the character tokenizer, or a local path.

    Args:
        path: a local directory with a saved transformers model and tokenizer; when set, the
            size arguments are ignored. Never a hub name: nothing is downloaded at run time.
        hidden_size: model width.
        num_layers: transformer blocks.
        num_heads: attention heads (``hidden_size`` must be a multiple).
        intermediate_size: MLP width of each block.
        max_position_embeddings: longest prompt + completion, in tokens.
        dtype, chat_template, system_prompt, gradient_checkpointing, attn_implementation, lora,
            save_merged: as ``HFCausalLM``.
    """

    def __init__(
        self,
        path: str | None = None,
        hidden_size: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        intermediate_size: int = 384,
        max_position_embeddings: int = 128,
        dtype: str = "float32",
        chat_template: bool = True,
        system_prompt: str | None = None,
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = None,
        lora: Mapping[str, Any] | None = None,
        save_merged: bool = False,
    ) -> None:
        require(
            hidden_size % num_heads == 0,
            f"hidden_size={hidden_size} must be a multiple of num_heads={num_heads}.",
        )
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        super().__init__(
            path,
            dtype=dtype,
            chat_template=chat_template,
            system_prompt=system_prompt,
            gradient_checkpointing=gradient_checkpointing,
            attn_implementation=attn_implementation,
            lora=lora,
            save_merged=save_merged,
        )

    def _load_tokenizer(self) -> PreTrainedTokenizerBase:
        return char_tokenizer() if self.path is None else super()._load_tokenizer()

    def _load_model(self, seed: int) -> PreTrainedModel:
        if self.path is not None:
            return super()._load_model(seed)
        tokenizer = self.tokenizer
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            tie_word_embeddings=True,
            **({} if self.attn_implementation is None else {"attn_implementation": self.attn_implementation}),
        )
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return LlamaForCausalLM(config).to(DTYPES[self.dtype])

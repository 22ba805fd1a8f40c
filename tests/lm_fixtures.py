"""Real-architecture language models built offline for tests: a Llama from a config with a
byte-level BPE tokenizer trained locally with ``tokenizers`` (pad == eos, a ChatML chat template,
a generation_config full of sampling defaults that plmods must ignore), saved like a hub model."""

from __future__ import annotations

from pathlib import Path

import torch

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS = [
    "What is 12+7? The answer is 19.", "so 3+4 = 7.", "Let me think: 25 plus 17 is 42.",
    "héllo wörld, naïve café — 東京 ☃", "Step 1: 3*4=12\nStep 2: 12+5=17\n", "The quick brown fox jumps.",
] * 20  # fmt: skip


def bpe_tokenizer(kind: str = "bytelevel"):
    """A ``PreTrainedTokenizerFast``: byte-level BPE (GPT-2 / Llama-3 / SmolLM2 style) or
    Metaspace BPE (SentencePiece style), eos ``<|im_end|>``, no pad token (so pad == eos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core = Tokenizer(models.BPE(unk_token=None if kind == "bytelevel" else "<|endoftext|>"))
    if kind == "bytelevel":
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        core.pre_tokenizer = pre_tokenizers.Metaspace()
        core.decoder = decoders.Metaspace()
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=alphabet, show_progress=False)
    core.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>", chat_template=CHATML
    )


def llama_dir(path: Path, seed: int = 0) -> Path:
    """A small Llama + byte-level BPE tokenizer saved to ``path`` (pad == eos; a generation config
    with repetition_penalty, top_k, top_p, min_p set, as real instruct models ship)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = bpe_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=256, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id, pad_token_id=tok.eos_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
        do_sample=True, temperature=0.6, top_k=20, top_p=0.8, min_p=0.1, repetition_penalty=1.3,
    )  # fmt: skip
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path

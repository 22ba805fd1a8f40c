from plmods.models.control import MLPActorCritic

_LAZY = {
    # the language models need the `llm` extra (transformers): imported on first use only
    "TinyCausalLM": "plmods.models.lm",
    "char_tokenizer": "plmods.models.lm",
    "HFCausalLM": "plmods.models.hf",
    "SmolLM2": "plmods.models.smollm2",
    "ValueHead": "plmods.models.critic",
    "CriticModel": "plmods.models.critic",
    "ResponseScorer": "plmods.models.scorer",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = ["CriticModel", "HFCausalLM", "MLPActorCritic", "ResponseScorer", "SmolLM2", "TinyCausalLM", "ValueHead", "char_tokenizer"]

from plmods.models.control import MLPActorCritic


def __getattr__(name: str):
    # the language models need the `llm` extra (transformers): imported on first use only
    if name in ("TinyCausalLM", "char_tokenizer"):
        from plmods.models import lm

        return getattr(lm, name)
    if name == "SFTWarmup":
        from plmods.models.sft import SFTWarmup

        return SFTWarmup
    raise AttributeError(name)


__all__ = ["MLPActorCritic", "SFTWarmup", "TinyCausalLM", "char_tokenizer"]

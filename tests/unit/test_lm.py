"""The offline tokenizer and tiny LM; loading a local checkpoint; the SFT warm-up and its cache."""

import random

import pytest
import torch
from lightning import Trainer

from plmods.callbacks import SFTWarmup
from plmods.envs.text import AdditionTask
from plmods.errors import ConfigError
from plmods.models.lm import TinyCausalLM, char_tokenizer
from plmods.models.sft import demonstration_batch, train_sft

SMALL = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def test_char_tokenizer_round_trips_with_distinct_pad_and_eos():
    tok = char_tokenizer()
    assert tok.pad_token_id != tok.eos_token_id
    ids = tok("12+34=", add_special_tokens=False)["input_ids"]
    assert len(ids) == 6 and tok.decode(ids) == "12+34="
    text = tok.apply_chat_template(
        [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}], tokenize=False
    )
    assert text == "<user>1+1=<assistant>2<eos>"
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=False) == "<user>x<assistant>"


def test_prompts_are_formatted_and_left_padded():
    lm = TinyCausalLM(**SMALL)
    ids, mask = lm.encode_prompts(["1+1=", "10+10="])
    assert mask[0].tolist()[:2] == [0, 0] and mask[1].all()
    assert lm.tokenizer.decode(ids[1]) == "<user>10+10=<assistant>"
    assert TinyCausalLM(**SMALL, chat_template=False).format_prompt("1+1=") == "1+1="
    assert TinyCausalLM(**SMALL, system_prompt="Be brief.").format_prompt("x") == "Be brief.<user>x<assistant>"


def test_tiny_model_builds_offline_and_deterministically():
    a = TinyCausalLM(**SMALL).build(seed=3)
    b = TinyCausalLM(**SMALL).build(seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not a.training


def test_local_path_loads_a_saved_checkpoint(tmp_path):
    lm = TinyCausalLM(**SMALL)
    model = lm.build()
    lm.save(model, str(tmp_path))
    other = TinyCausalLM(path=str(tmp_path))
    loaded = other.build()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), loaded.parameters(), strict=True))
    assert other.tokenizer.pad_token_id == lm.tokenizer.pad_token_id and other.tokenizer.padding_side == "left"


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(path="/no/such/dir"), "path='/no/such/dir' is not a local directory"),
     (dict(hidden_size=30, num_heads=4), "hidden_size=30 must be a multiple of num_heads=4"),
     (dict(dtype="int8"), "dtype must be one of float32, bfloat16, float16, got 'int8'"),
     (dict(lora={"rank": 4}), "lora has unknown keys ['rank']; valid: r, alpha, target_modules, dropout"),
     (dict(lora={"r": -1}), "lora.r must be >= 0 (0: no LoRA), got -1"),
     (dict(system_prompt="x", chat_template=False), "system_prompt needs chat_template=true")],
)  # fmt: skip
def test_bad_model_settings(kwargs, message):
    with pytest.raises(ConfigError) as info:
        TinyCausalLM(**{**SMALL, **kwargs})
    assert message in str(info.value)


class _Holder(torch.nn.Module):
    """The SFTWarmup protocol (plmods.protocols.WarmUpTarget) without an LM module."""

    def __init__(self, lm, task):
        super().__init__()
        self.model_factory, self.task, self.seed, self.sft_stats, self.policy_built = lm, task, 0, None, False


def _run_sft(holder, sft, tmp_path):
    trainer = Trainer(logger=False, default_root_dir=str(tmp_path), enable_progress_bar=False)
    sft.setup(trainer, holder, "fit")
    return holder


def test_sft_lowers_the_loss_on_answers_and_is_cached(tmp_path):
    task = AdditionTask(digits=1)
    sft = SFTWarmup(steps=30, batch_size=16, lr=3e-3, cache_dir=str(tmp_path / "cache"))
    holder = _run_sft(_Holder(TinyCausalLM(**SMALL), task), sft, tmp_path)
    stats = holder.sft_stats
    assert stats["loss_last"] < stats["loss_first"]
    assert holder.model_factory.path == stats["cached"]
    warmed = holder.model_factory.build()
    # a second run finds the cache: no training
    again = _run_sft(_Holder(TinyCausalLM(**SMALL), task), SFTWarmup(steps=30, batch_size=16, lr=3e-3, cache_dir=str(tmp_path / "cache")), tmp_path)
    assert "seconds" not in again.sft_stats and again.sft_stats["cached"] == stats["cached"]
    assert all(torch.equal(p, q) for p, q in zip(warmed.parameters(), again.model_factory.build().parameters(), strict=True))


def test_sft_cache_key_covers_the_demonstrations(tmp_path):
    class Shifted(AdditionTask):
        def demonstration(self, problem):
            return str(int(problem["answer"]) + 1)

    sft = SFTWarmup(steps=1)
    lm = TinyCausalLM(**SMALL)
    assert sft.key(lm, AdditionTask(), 0) != sft.key(lm, Shifted(), 0)
    assert sft.key(lm, AdditionTask(), 0) == sft.key(lm, AdditionTask(), 0)
    excluded = AdditionTask()
    excluded.exclude(excluded.heldout(5, seed=1))
    assert sft.key(lm, AdditionTask(), 0) != sft.key(lm, excluded, 0)


def test_sft_needs_its_protocol():
    with pytest.raises(ConfigError, match=r"callbacks.sft_warmup needs a language module .*; Linear has no model_factory, task"):
        SFTWarmup(steps=1).setup(Trainer(logger=False), torch.nn.Linear(1, 1), "fit")


def test_sft_labels_cover_the_answer_and_eos_only():
    lm = TinyCausalLM(**SMALL)
    problems = AdditionTask().sample(3, random.Random(0))
    pairs = [(p["prompt"], p["answer"]) for p in problems]
    batch = demonstration_batch(lm, pairs)
    tok = lm.tokenizer
    for row, labels, mask, (prompt, answer) in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], pairs, strict=True):
        assert tok.decode(row[labels != -100]) == answer + "<eos>"
        assert tok.decode(row[(labels == -100) & mask.bool()]) == lm.format_prompt(prompt)
    assert batch["position_ids"][batch["attention_mask"].bool()].min() == 0


def test_train_sft_leaves_the_global_rng_alone():
    lm = TinyCausalLM(**SMALL)
    model = lm.build()
    state = torch.get_rng_state()
    train_sft(model, lm, AdditionTask().demonstrations, steps=2, batch_size=4, lr=1e-3, seed=0)
    assert torch.equal(state, torch.get_rng_state()) and not model.training

"""The offline tokenizer and tiny LM; loading a local checkpoint; the SFT warm-up and its cache."""

import random

import pytest
import torch

from plmods.envs.text import AdditionTask
from plmods.errors import ConfigError
from plmods.models.lm import TinyCausalLM, char_tokenizer
from plmods.models.sft import SFTWarmup, tokenize_prompts

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


def test_prompts_are_left_padded():
    ids, mask = tokenize_prompts(char_tokenizer(), ["1+1=", "10+10="])
    assert mask[0].tolist()[:2] == [0, 0] and mask[1].all()


def test_tiny_model_builds_offline_and_deterministically():
    a, _ = TinyCausalLM(**SMALL).build(seed=3)
    b, _ = TinyCausalLM(**SMALL).build(seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not a.training


def test_local_path_loads_a_saved_checkpoint(tmp_path):
    model, tok = TinyCausalLM(**SMALL).build()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = TinyCausalLM(path=str(tmp_path)).build()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), loaded.parameters(), strict=True))
    assert loaded_tok.pad_token_id == tok.pad_token_id and loaded_tok.padding_side == "left"


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(path="/no/such/dir"), "model.path='/no/such/dir' is not a local directory"),
     (dict(hidden_size=30, num_heads=4), "model.hidden_size=30 must be a multiple of model.num_heads=4")],
)  # fmt: skip
def test_bad_model_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TinyCausalLM(**kwargs)


def test_sft_lowers_the_loss_on_answers_and_is_cached(tmp_path):
    factory = TinyCausalLM(**SMALL)
    task = AdditionTask(digits=1)
    model, tok = factory.build()
    sft = SFTWarmup(steps=30, batch_size=16, lr=3e-3, cache_dir=str(tmp_path))
    stats = sft.apply(model, tok, task, factory.config_key())
    assert stats["loss_last"] < stats["loss_first"]
    # a second model gets the cached weights (no training)
    other, _ = factory.build()
    again = sft.apply(other, tok, task, factory.config_key())
    assert "seconds" not in again and again["cached"] == stats["cached"]
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), other.parameters(), strict=True))
    # the cache is a transformers checkpoint: model.path can load it
    loaded, _ = TinyCausalLM(path=stats["cached"]).build()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), loaded.parameters(), strict=True))


def test_sft_labels_cover_the_answer_and_eos_only():
    tok = char_tokenizer()
    task = AdditionTask()
    problems = task.sample(3, random.Random(0))
    prompts, answers = [p["prompt"] for p in problems], [p["answer"] for p in problems]
    full, mask = tokenize_prompts(tok, prompts, answers)
    # the last tokens of each row are the answer's characters and eos
    for row, answer in zip(full, answers, strict=True):
        assert tok.decode(row[-len(answer) - 1 :]) == answer + "<eos>"

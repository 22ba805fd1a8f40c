"""ResponseScorer: hand-computed log-probs, the chunked head against the model's own logits, shared
prompts against one direct forward (values and gradients), and the memory bound (the head never
sees more than ``logits_chunk_size`` tokens, the model's own head an empty slice).

``CountingLM`` is a fake causal LM whose final hidden state is ``[position id, running sum of the
attended input ids]`` and whose head is the identity (so positions and the attention mask are
visible in the logits, as in a model with absolute position embeddings, unlike RoPE).
"""

import math
from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict
from torch import nn

from plmods.models.lm import TinyCausalLM
from plmods.models.scorer import ResponseScorer, token_scores


class CountingLM(nn.Module):
    """hidden[..., 0] = position id, hidden[..., 1] = sum of the attended input ids up to here;
    logits = lm_head(hidden) with an identity head."""

    def __init__(self) -> None:
        super().__init__()
        self.lm_head = nn.Identity()
        self.head_inputs: list[tuple[int, ...]] = []
        self.lm_head.register_forward_hook(lambda m, args, out: self.head_inputs.append(tuple(args[0].shape)))

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, **_):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if position_ids is None:  # what a transformers model uses without position ids
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        hidden = torch.stack([position_ids, (input_ids * mask).cumsum(-1)], -1).float()
        return SimpleNamespace(logits=self.lm_head(hidden[:, -logits_to_keep:]))


# P = 3 prompt tokens (row 0 left-padded with pad id 9), T = 2 response tokens
IDS = torch.tensor([[9, 3, 4, 1, 0], [1, 2, 3, 0, 1]])
MASK = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
# positions (cumsum(mask) - 1).clamp_min(0): row 0 [0, 0, 1, 2, 3], row 1 [0, 1, 2, 3, 4]
# attended sums cumsum(ids * mask):         row 0 [0, 3, 7, 8, 8], row 1 [1, 3, 6, 6, 7]
# response token k is predicted at position P - 1 + k = 2, 3
RAW = [[[1.0, 7.0], [2.0, 8.0]], [[2.0, 6.0], [3.0, 6.0]]]
TOKENS = torch.tensor([[1, 0], [0, 1]])
VALID = torch.tensor([[True, True], [True, False]])


def _softplus(x):
    return math.log1p(math.exp(x))


def test_hidden_states_count_positions_over_the_mask():
    hidden = ResponseScorer(CountingLM()).hidden(IDS, MASK, TOKENS, VALID)
    torch.testing.assert_close(hidden, torch.tensor(RAW), rtol=0, atol=0)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_log_probs_gather_the_tokens_divide_by_temperature_and_zero_the_masked_ones(temperature):
    scores = ResponseScorer(CountingLM(), temperature=temperature)(IDS, MASK, TOKENS, VALID, entropy=True)
    # log softmax of [a, b] / t: log p0 = -softplus((b - a) / t), log p1 = -softplus((a - b) / t)
    t = temperature
    expected = torch.tensor([[-_softplus((1 - 7) / t), -_softplus((8 - 2) / t)], [-_softplus((6 - 2) / t), 0.0]])
    torch.testing.assert_close(scores.log_probs, expected, rtol=0, atol=1e-6)

    def entropy(a, b):
        p = 1 / (1 + math.exp((b - a) / t))
        return -(p * math.log(p) + (1 - p) * math.log(1 - p))

    torch.testing.assert_close(scores.entropy, torch.tensor([[entropy(1, 7), entropy(2, 8)], [entropy(2, 6), 0.0]]), rtol=0, atol=1e-6)


def test_default_temperature_is_one():
    assert ResponseScorer(CountingLM()).temperature == 1.0


def test_the_model_head_sees_an_empty_slice_and_ours_at_most_a_chunk_of_valid_tokens():
    model = CountingLM()
    ResponseScorer(model, logits_chunk_size=2)(IDS, MASK, TOKENS, VALID)
    # the model's own call (empty), then ours inside it: 3 valid tokens in chunks of 2 and 1
    assert sorted(model.head_inputs) == sorted([(2, 0, 2), (2, 2), (1, 2)])


def test_log_probs_of_a_batch_run_micro_batch_size_rows_at_a_time():
    model = CountingLM()
    batch = TensorDict(input_ids=IDS, attention_mask=MASK, response_tokens=TOKENS, response_mask=VALID, batch_size=[2])
    whole = ResponseScorer(model).log_probs(batch)
    model.head_inputs.clear()
    split = ResponseScorer(model).log_probs(batch, micro_batch_size=1)
    torch.testing.assert_close(split, whole, rtol=0, atol=0)
    assert [shape[0] for shape in model.head_inputs[::2]] == [1, 1]  # the model ran one row at a time


# --- a real (tiny) Llama --------------------------------------------------------------------------


def _llama():
    return TinyCausalLM(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32).build(seed=0)


# 7 rows of 3 prompts, not contiguous; prompt 2's only row is row 6, past P + T = 5
GROUP = torch.tensor([0, 1, 0, 1, 1, 0, 2])


def _shared_batch(T: int, P: int = 3):
    torch.manual_seed(0)
    prompts = torch.randint(6, 104, (3, P))
    prompt_mask = torch.ones(3, P, dtype=torch.long)
    prompt_mask[1, 0] = 0  # prompt 1 is left-padded
    prompts[1, 0] = 0  # pad id
    responses = torch.randint(6, 104, (7, T))
    input_ids = torch.cat([prompts[GROUP], responses], 1)
    attention_mask = torch.cat([prompt_mask[GROUP], torch.ones(7, T, dtype=torch.long)], 1)
    return input_ids, attention_mask


def _direct(model, input_ids, attention_mask, T, temperature):
    """log_softmax of one plain forward of the model over prompt + response at the response tokens."""
    P = input_ids.shape[1] - T
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=(attention_mask.cumsum(-1) - 1).clamp_min(0)).logits
    logits = logits[:, P - 1 : P + T - 1].float() / temperature
    return logits.log_softmax(-1).gather(-1, input_ids[:, P:].unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize(("T", "share", "chunk"), [(1, True, 1024), (2, True, 3), (3, False, 1024), (3, False, 5)])
def test_log_probs_and_gradients_equal_one_direct_forward(T, share, chunk):
    input_ids, attention_mask = _shared_batch(T)
    mask = torch.ones(7, T, dtype=torch.bool)
    mask[2, -1] = False  # a shorter response
    model = _llama()
    scores = ResponseScorer(model, temperature=2.0, share_prompts=share, logits_chunk_size=chunk)(
        input_ids, attention_mask, input_ids[:, -T:], mask, GROUP
    )
    weights = torch.linspace(0.5, 1.5, 7 * T).view(7, T)  # any fixed loss of the log-probs
    (scores.log_probs * weights).sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    direct = _direct(model, input_ids, attention_mask, T, 2.0).masked_fill(~mask, 0.0)
    (direct * weights).sum().backward()
    torch.testing.assert_close(scores.log_probs, direct.detach(), rtol=0, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_shared_prompts_follow_the_input_device_not_the_default_one():
    """Tensors built inside must live on the inputs' device (a CUDA batch would otherwise meet CPU
    index tensors); a 'meta' default device stands in for that on CPU."""
    model = _llama()
    input_ids, attention_mask = _shared_batch(3)
    mask = torch.ones(7, 3, dtype=torch.bool)
    with torch.no_grad(), torch.device("meta"):
        scores = ResponseScorer(model)(input_ids, attention_mask, input_ids[:, -3:], mask, GROUP)
    assert scores.log_probs.device.type == "cpu"
    with torch.no_grad():
        torch.testing.assert_close(scores.log_probs, _direct(model, input_ids, attention_mask, 3, 1.0), rtol=0, atol=1e-5)


class Spy(nn.Module):
    """Passes every call to ``inner`` and records the shape of its ``input_ids``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.shapes = []

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kwargs):
        self.shapes.append(tuple(kwargs["input_ids"].shape))
        return self.inner(**kwargs)


def test_each_shared_prompt_runs_once():
    spy = Spy(_llama())
    input_ids, attention_mask = _shared_batch(2)
    batch = TensorDict(input_ids=input_ids, attention_mask=attention_mask, response_tokens=input_ids[:, 3:],
                       response_mask=torch.ones(7, 2, dtype=torch.bool), prompt_group=GROUP, batch_size=[7])  # fmt: skip
    ResponseScorer(spy).log_probs(batch)
    assert spy.shapes == [(3, 3), (7, 1)]  # 3 prompts of 3 tokens, then 7 rows of T - 1 = 1 token


# --- the head check -------------------------------------------------------------------------------


class ScaledLogits(CountingLM):
    """A model whose logits are 3 * head(h) (as Cohere's logit_scale): not head(h)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        return SimpleNamespace(logits=out.logits * 3.0)


def test_a_model_whose_logits_are_not_its_head_falls_back_to_its_own_logits():
    assert ResponseScorer(CountingLM()).check_head() is True
    scorer = ResponseScorer(ScaledLogits())
    assert scorer.check_head() is False
    scores = scorer(IDS, MASK, TOKENS, VALID)
    t = 1 / 3  # logits 3x: the same as temperature 1/3 on the raw values
    expected = torch.tensor([[-_softplus((1 - 7) / t), -_softplus((8 - 2) / t)], [-_softplus((6 - 2) / t), 0.0]])
    torch.testing.assert_close(scores.log_probs, expected, rtol=0, atol=1e-5)


def test_entropy_carries_a_gradient_only_when_asked():
    head = nn.Linear(2, 3)
    hidden = torch.randn(4, 2)
    tokens = torch.tensor([0, 1, 2, 0])
    _, detached = token_scores(head, hidden, tokens, 1.0, entropy=True)
    _, live = token_scores(head, hidden, tokens, 1.0, entropy=True, entropy_grad=True)
    assert not detached.requires_grad and live.requires_grad
    torch.testing.assert_close(detached, live.detach(), rtol=0, atol=0)

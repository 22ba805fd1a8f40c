"""ResponseScorer and MaskedGRPOLoss corners that tests/unit/test_grpo_loss.py leaves open.

Hand-computed numbers come from two fakes: ``CountingLM``, whose logits are the position id and
the running sum of the attended input ids (so positions and the attention mask are visible, as in
a model with absolute position embeddings, unlike RoPE), and ``TableScorer``, a fixed logit table.
The shared-prompt path runs a real (tiny) Llama, checked against one direct forward of the model.
"""

import math
import re
from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict
from torch import nn

from plmods.algos.grpo_loss import AGGREGATIONS, MaskedGRPOLoss, ResponseScorer
from plmods.models.lm import TinyCausalLM

LN2 = math.log(2)


class CountingLM(nn.Module):
    """logits[..., 0] = position id, logits[..., 1] = sum of the attended input ids up to here."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, **_):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if position_ids is None:  # what a transformers model uses without position ids
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        logits = torch.stack([position_ids, (input_ids * mask).cumsum(-1)], -1).float()
        return SimpleNamespace(logits=logits[:, -logits_to_keep:])


# P = 3 prompt tokens (row 0 left-padded with pad id 9), T = 2 response tokens
IDS = torch.tensor([[9, 3, 4, 1, 0], [1, 2, 3, 0, 1]])
MASK = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
# positions (cumsum(mask) - 1).clamp_min(0): row 0 [0, 0, 1, 2, 3], row 1 [0, 1, 2, 3, 4]
# attended sums cumsum(ids * mask):         row 0 [0, 3, 7, 8, 8], row 1 [1, 3, 6, 6, 7]
# response token k is predicted at position P - 1 + k = 2, 3
RAW = [[[1.0, 7.0], [2.0, 8.0]], [[2.0, 6.0], [3.0, 6.0]]]


def test_plain_forward_counts_positions_over_the_mask_and_divides_by_temperature():
    logits = ResponseScorer(CountingLM(), temperature=2.0)(IDS, MASK, 2)
    expected = torch.tensor([[[0.5, 3.5], [1.0, 4.0]], [[1.0, 3.0], [1.5, 3.0]]])
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_default_temperature_is_one():
    logits = ResponseScorer(CountingLM())(IDS, MASK, 2)
    torch.testing.assert_close(logits, torch.tensor(RAW), rtol=0, atol=0)


def _softplus(x):
    return math.log1p(math.exp(x))


def test_log_probs_gather_the_response_tokens_and_zero_the_masked_ones():
    batch = TensorDict(
        input_ids=IDS,
        attention_mask=MASK,
        response_tokens=torch.tensor([[1, 0], [0, 1]]),
        response_mask=torch.tensor([[True, True], [True, False]]),
        batch_size=[2],
    )
    log_probs = ResponseScorer(CountingLM()).log_probs(batch)
    # log softmax of [a, b]: log p0 = -softplus(b - a), log p1 = -softplus(a - b)
    expected = torch.tensor([[-_softplus(1 - 7), -_softplus(8 - 2)], [-_softplus(6 - 2), 0.0]])
    torch.testing.assert_close(log_probs, expected, rtol=0, atol=1e-6)


# --- shared prompts on a real tiny Llama --------------------------------------------------------


class Spy(nn.Module):
    """Passes every call to ``inner`` and records the shape of its ``input_ids``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.shapes = []

    def forward(self, **kwargs):
        self.shapes.append(tuple(kwargs["input_ids"].shape))
        return self.inner(**kwargs)


def _llama():
    model = TinyCausalLM(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32).build(seed=0)
    return model


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
    """One forward of the model over prompt + response: position P - 1 + k predicts token k."""
    P = input_ids.shape[1] - T
    with torch.no_grad():
        logits = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=(attention_mask.cumsum(-1) - 1).clamp_min(0),
        ).logits
    return logits[:, P - 1 : P + T - 1] / temperature


@pytest.mark.parametrize("T", [1, 2])
def test_shared_prompt_forward_equals_one_direct_forward(T):
    model = _llama()
    input_ids, attention_mask = _shared_batch(T)
    with torch.no_grad():
        logits = ResponseScorer(model, temperature=2.0)(input_ids, attention_mask, T, GROUP)
    assert logits.shape == (7, T, model.config.vocab_size)
    torch.testing.assert_close(logits, _direct(model, input_ids, attention_mask, T, 2.0), rtol=0, atol=1e-5)


def test_shared_prompt_forward_follows_the_input_device_not_the_default_one():
    """Tensors built inside must live on the inputs' device (a CUDA batch would otherwise meet CPU
    index tensors); a 'meta' default device stands in for that on CPU."""
    model = _llama()
    input_ids, attention_mask = _shared_batch(3)
    with torch.no_grad(), torch.device("meta"):
        logits = ResponseScorer(model)(input_ids, attention_mask, 3, GROUP)
    assert logits.device.type == "cpu"
    torch.testing.assert_close(logits, _direct(model, input_ids, attention_mask, 3, 1.0), rtol=0, atol=1e-5)


def _spy_batch(**extra) -> TensorDict:
    """The shared-prompt batch with T = 2 response tokens, as the scorer and the loss read it."""
    input_ids, attention_mask = _shared_batch(2)
    return TensorDict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_tokens=input_ids[:, 3:],
        response_mask=torch.ones(7, 2, dtype=torch.bool),
        prompt_group=GROUP,
        batch_size=[7],
        **extra,
    )


def test_log_probs_run_each_shared_prompt_once():
    spy = Spy(_llama())
    batch = _spy_batch()
    with torch.no_grad():
        ResponseScorer(spy).log_probs(batch)
    assert spy.shapes == [(3, 3), (7, 1)]  # 3 prompts of 3 tokens, then 7 rows of T - 1 = 1 token


def test_loss_runs_each_shared_prompt_once():
    spy = Spy(_llama())
    batch = _spy_batch(old_log_probs=torch.zeros(7, 2), advantage=torch.ones(7, 2, 1))
    MaskedGRPOLoss(ResponseScorer(spy), entropy_bonus=False, kl_to_ref_coeff=0.0)(batch)
    assert spy.shapes == [(3, 3), (7, 1)]


# --- MaskedGRPOLoss --------------------------------------------------------------------------------


class TableScorer(nn.Module):
    """Returns a fixed logit table [N, T, 2] with a gradient."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, input_ids, attention_mask, num_response, prompt_group=None):
        return self.logits


def _batch(mask, old, ref=None) -> TensorDict:
    n, t = mask.shape
    fields = dict(
        input_ids=torch.zeros(n, t + 2, dtype=torch.long),
        attention_mask=torch.ones(n, t + 2, dtype=torch.long),
        response_tokens=torch.zeros(n, t, dtype=torch.long),
        response_mask=mask,
        old_log_probs=old,
        advantage=torch.ones(n, t, 1),
    )
    if ref is not None:
        fields["ref_log_probs"] = ref
    return TensorDict(fields, batch_size=[n])


def _uniform_batch(ref_shape=(2, 4)):
    """test_grpo_loss's batch: pi = 0.5, p_old = [0.4, 0.5, 0.6 | 0.4, 0.6] on the 5 valid tokens."""
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    old = torch.log(torch.tensor([[0.4, 0.5, 0.6, 1.0], [0.4, 0.6, 1.0, 1.0]])).masked_fill(~mask, 0.0)
    return _batch(mask, old, ref=torch.full(ref_shape, math.log(0.25)))


def test_diagnostics_of_a_batch_without_response_tokens_are_zero():
    mask = torch.zeros(2, 3, dtype=torch.bool)
    loss = MaskedGRPOLoss(TableScorer(torch.zeros(2, 3, 2)), entropy_bonus=False, kl_to_ref_coeff=0.0)
    out = loss(_batch(mask, torch.zeros(2, 3)))
    assert float(out.kl_approx) == 0.0
    assert float(out.clip_fraction) == 0.0


def test_ratios_exactly_on_the_clip_bounds_are_not_clipped():
    # pi(token 0) = 1 in float32 (logit gap 1e4), so log r = -old exactly
    loss = MaskedGRPOLoss(
        TableScorer(torch.tensor([[[0.0, -1e4]] * 4])),
        clip_epsilon=0.2,
        entropy_bonus=False,
        kl_to_ref_coeff=0.0,
    )
    low, high = loss._clip_bounds  # log 0.8, log 1.2 (float32)
    old = torch.stack([-low, -high, torch.tensor(0.3), torch.tensor(0.0)]).view(1, 4)
    out = loss(_batch(torch.ones(1, 4, dtype=torch.bool), old))
    assert float(out.clip_fraction) == pytest.approx(1 / 4, abs=1e-7)  # only log r = -0.3 < log 0.8
    ratios = [0.8, 1.2, math.exp(-0.3), 1.0]
    assert float(out.kl_approx) == pytest.approx(sum(r - 1 - math.log(r) for r in ratios) / 4, abs=1e-6)


def test_kl_to_inference_uses_its_own_coefficient():
    loss = MaskedGRPOLoss(
        TableScorer(torch.zeros(2, 4, 2)),
        aggregation=AGGREGATIONS["token_mean"],
        entropy_bonus=False,
        kl_to_ref_coeff=0.1,
        kl_to_inference_coeff=0.3,
    )
    out = loss(_uniform_batch())
    # d = log p_old - log pi = log x with x = p_old / 0.5 = [0.8, 1, 1.2, 0.8, 1.2]: k3 = x - 1 - ln x
    kl = sum(x - 1 - math.log(x) for x in [0.8, 1.0, 1.2, 0.8, 1.2]) / 5
    assert float(out.kl_to_inference) == pytest.approx(kl, abs=1e-7)
    assert float(out.loss_kl_to_inference) == pytest.approx(0.3 * kl, abs=1e-7)


def test_kl_to_ref_without_a_mask_averages_every_position():
    loss = MaskedGRPOLoss(TableScorer(torch.zeros(2, 4, 2)), kl_to_ref_coeff=0.1)
    cur = torch.full((2, 4), -LN2)
    ref = torch.log(torch.tensor([[0.25, 0.25, 0.25, 1.0], [0.25, 0.25, 1.0, 1.0]]))
    td = TensorDict(_cur_log_prob=cur, ref=ref)
    # d = ref - cur: -ln 2 on 5 positions (k3 = 0.5 + ln 2 - 1), +ln 2 on 3 (k3 = 1 - ln 2)
    kl = (5 * (0.5 + LN2 - 1) + 3 * (1 - LN2)) / 8
    loss_kl, value = loss._kl_to_ref(td, key="ref")
    assert float(value) == pytest.approx(kl, abs=1e-7)
    assert float(loss_kl) == pytest.approx(0.1 * kl, abs=1e-7)
    loss_kl, value = loss._kl_to_ref(td, key="ref", coeff=0.5)
    assert float(loss_kl) == pytest.approx(0.5 * kl, abs=1e-7)


def test_ref_log_probs_of_the_wrong_shape_are_named():
    loss = MaskedGRPOLoss(TableScorer(torch.zeros(2, 4, 2)), entropy_bonus=False, kl_to_ref_coeff=0.1)
    with pytest.raises(ValueError, match=re.escape("ref_log_probs has shape (2, 3), expected (2, 4).")):
        loss(_uniform_batch(ref_shape=(2, 3)))

"""MaskedGRPOLoss corners that tests/unit/test_grpo_loss.py leaves open (the scorer's own corners
are in tests/unit/test_scorer.py). ``TableScorer`` is a fixed logit table with a gradient."""

import math
import re

import pytest
import torch
from scorer_fakes import TableScorer
from tensordict import TensorDict

from plmods.algos.grpo_loss import MaskedGRPOLoss

LN2 = math.log(2)


# --- MaskedGRPOLoss --------------------------------------------------------------------------------


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
    loss = MaskedGRPOLoss(TableScorer(torch.zeros(2, 3, 2)))
    out = loss(_batch(mask, torch.zeros(2, 3)))
    assert float(out.kl_approx) == 0.0
    assert float(out.clip_fraction) == 0.0


def test_ratios_exactly_on_the_clip_bounds_are_not_clipped():
    # pi(token 0) = 1 in float32 (logit gap 1e4), so log r = -old exactly
    loss = MaskedGRPOLoss(TableScorer(torch.tensor([[[0.0, -1e4]] * 4])), clip_epsilon=0.2)
    low, high = loss._clip_bounds  # log 0.8, log 1.2 (float32)
    old = torch.stack([-low, -high, torch.tensor(0.3), torch.tensor(0.0)]).view(1, 4)
    out = loss(_batch(torch.ones(1, 4, dtype=torch.bool), old))
    assert float(out.clip_fraction) == pytest.approx(1 / 4, abs=1e-7)  # only log r = -0.3 < log 0.8
    ratios = [0.8, 1.2, math.exp(-0.3), 1.0]
    assert float(out.kl_approx) == pytest.approx(sum(r - 1 - math.log(r) for r in ratios) / 4, abs=1e-6)


def test_kl_to_inference_uses_its_own_coefficient():
    loss = MaskedGRPOLoss(TableScorer(torch.zeros(2, 4, 2)), aggregation="token_mean", kl_coef=0.1)
    loss.kl_to_inference_coeff = 0.3  # torchrl's own term, kept working
    out = loss(_uniform_batch())
    # d = log p_old - log pi = log x with x = p_old / 0.5 = [0.8, 1, 1.2, 0.8, 1.2]: k3 = x - 1 - ln x
    kl = sum(x - 1 - math.log(x) for x in [0.8, 1.0, 1.2, 0.8, 1.2]) / 5
    assert float(out.kl_to_inference) == pytest.approx(kl, abs=1e-7)
    assert float(out.loss_kl_to_inference) == pytest.approx(0.3 * kl, abs=1e-7)


def test_kl_to_ref_without_a_mask_averages_every_position():
    loss = MaskedGRPOLoss(TableScorer(torch.zeros(2, 4, 2)), kl_coef=0.1)
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
    loss = MaskedGRPOLoss(TableScorer(torch.zeros(2, 4, 2)), kl_coef=0.1)
    with pytest.raises(ValueError, match=re.escape("ref_log_probs has shape (2, 3), expected (2, 4).")):
        loss(_uniform_batch(ref_shape=(2, 3)))


def test_beta_is_a_buffer_of_the_loss_and_torchrl_reads_it():
    loss = MaskedGRPOLoss(TableScorer(torch.zeros(2, 4, 2)), kl_coef=0.1)
    assert float(loss.state_dict()["kl_coef"]) == pytest.approx(0.1)
    loss.kl_coef.fill_(0.3)
    assert loss.kl_to_ref_coeff == pytest.approx(0.3)
    out = loss(_uniform_batch())
    assert float(out.loss_kl_to_ref) == pytest.approx(0.3 * float(out.kl_to_ref), abs=1e-7)


def test_a_kl_in_the_reward_adds_no_kl_term_to_the_loss():
    loss = MaskedGRPOLoss(TableScorer(torch.zeros(2, 4, 2)), kl_coef=0.1, kl_penalty="reward")
    assert loss.kl_to_ref_coeff is None and loss.needs_reference
    out = loss(_uniform_batch())
    assert out.loss_kl_to_ref is None and out.kl_to_ref is None
    with_term = MaskedGRPOLoss(TableScorer(torch.zeros(2, 4, 2)), kl_coef=0.1)(_uniform_batch())
    assert float(out.loss_objective) == float(with_term.loss_objective)


def test_the_0_1_argument_names_still_work_with_a_warning():
    with pytest.warns(DeprecationWarning, match="kl_to_ref_coeff"):
        loss = MaskedGRPOLoss(TableScorer(torch.zeros(2, 4, 2)), kl_to_ref_coeff=0.2, entropy_bonus=False)
    assert float(loss.kl_coef) == pytest.approx(0.2)
    with pytest.warns(DeprecationWarning, match="prompt_mean"):
        assert MaskedGRPOLoss(TableScorer(torch.zeros(2, 4, 2)), aggregation="prompt_mean").aggregation == "prompt_mean"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"clip_epsilon": 1.0}, "clip_epsilon must be in (0, 1)"), ({"kl_coef": -1.0}, "kl_coef must be >= 0"),
     ({"kl_penalty": "both"}, "kl_penalty must be one of loss, reward"), ({"aggregation": "sum"}, "aggregation must be one of"),
     ({"entropy_coeff": -0.1}, "entropy_coeff must be >= 0"), ({"clip_epsilon_high": -0.1}, "clip_epsilon_high must be > 0")],
)  # fmt: skip
def test_bad_loss_settings_name_the_setting(kwargs, message):
    from plmods.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        MaskedGRPOLoss(TableScorer(torch.zeros(2, 4, 2)), **kwargs)

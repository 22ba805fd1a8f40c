"""MaskedGRPOLoss (torchrl GRPOLoss with response-token KL) against hand-computed numbers.

The policy is a fixed table of zero logits over 2 tokens, so pi(token) = 0.5 everywhere and
every ratio, clip and KL below is computed by hand from the GRPO objective of seed 003.
"""

import math

import pytest
import torch
from scorer_fakes import TableScorer
from tensordict import TensorDict
from torchrl.objectives.llm import GRPOLoss

from plmods.algos.grpo_loss import MaskedGRPOLoss

LN2 = math.log(2)


def UniformScorer(n: int, t: int) -> TableScorer:  # noqa: N802
    """logits [N, T, V=2] of zeros with a gradient: pi = 0.5 for both tokens."""
    return TableScorer(torch.zeros(n, t, 2))


def _batch() -> TensorDict:
    # row 0: 3 response tokens, row 1: 2 (5 valid of 8 positions)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    old = torch.log(torch.tensor([[0.4, 0.5, 0.6, 1.0], [0.4, 0.6, 1.0, 1.0]])).masked_fill(~mask, 0.0)
    return TensorDict(
        input_ids=torch.zeros(2, 6, dtype=torch.long),
        attention_mask=torch.ones(2, 6, dtype=torch.long),
        response_tokens=torch.zeros(2, 4, dtype=torch.long),
        response_mask=mask,
        old_log_probs=old,  # ratios 0.5 / p_old: row 0 [1.25, 1, 5/6], row 1 [1.25, 5/6]
        ref_log_probs=torch.full((2, 4), math.log(0.25)).masked_fill(~mask, 0.0),
        advantage=torch.tensor([1.0, -1.0]).view(2, 1, 1).expand(2, 4, 1),
        batch_size=[2],
    )


# min(r A, clip(r, 0.8, 1.2) A) per valid token
GAINS = [[1.2, 1.0, 5 / 6], [-1.25, -5 / 6]]


def _loss(aggregation="token_mean", kl_coef=0.1, **kwargs):
    return MaskedGRPOLoss(UniformScorer(2, 4), clip_epsilon=0.2, aggregation=aggregation, kl_coef=kl_coef, **kwargs)


def test_token_mean_objective_matches_the_seed_formula():
    out = _loss("token_mean")(_batch())
    expected = -sum(sum(row) for row in GAINS) / 5
    assert float(out.loss_objective) == pytest.approx(expected, abs=1e-6)  # -0.19


def test_sequence_mean_objective_averages_each_completion_first():
    out = _loss("sequence_mean")(_batch())
    expected = -(sum(GAINS[0]) / 3 + sum(GAINS[1]) / 2) / 2
    assert float(out.loss_objective) == pytest.approx(expected, abs=1e-6)


def test_sequence_sum_objective_sums_each_completion_then_averages():
    """REINFORCE's -log pi(o) (R - b): the completion's token sum, the mean over completions."""
    out = _loss("sequence_sum")(_batch())
    expected = -(sum(GAINS[0]) + sum(GAINS[1])) / 2
    assert float(out.loss_objective) == pytest.approx(expected, abs=1e-6)
    assert float(out.kl_to_ref) == pytest.approx((0.5 + LN2 - 1) * (3 + 2) / 2, abs=1e-6)  # k3 summed per completion


def test_asymmetric_clip_uses_the_higher_upper_bound():
    loss = MaskedGRPOLoss(UniformScorer(2, 4), clip_epsilon=0.2, clip_epsilon_high=0.28)
    out = loss(_batch())
    # row 0's ratio 1.25 now lies inside [0.8, 1.28]: its gain is 1.25 instead of 1.2
    expected = -(1.25 + 1.0 + 5 / 6 - 1.25 - 5 / 6) / 5
    assert float(out.loss_objective) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
def test_kl_to_reference_is_a_mean_over_response_tokens(aggregation):
    out = _loss(aggregation)(_batch())
    # k3 with log(ref / pi) = log(0.25 / 0.5) = -ln 2: exp(-ln 2) + ln 2 - 1 on every valid token
    k3 = 0.5 + LN2 - 1
    assert float(out.kl_to_ref) == pytest.approx(k3, abs=1e-6)
    assert float(out.loss_kl_to_ref) == pytest.approx(0.1 * k3, abs=1e-7)


def test_upstream_grpo_loss_dilutes_the_kl_over_padding():
    """Pins the torchrl 0.14.1 bug this subclass fixes: the mean runs over all 8 positions."""
    batch = _batch()
    loss = _loss()
    cur = torch.full((2, 4), -LN2)
    diluted, _ = GRPOLoss._kl_to_ref(
        loss, TensorDict(_cur_log_prob=cur, ref=batch["ref_log_probs"]), key="ref", mask=batch["response_mask"]
    )
    assert float(diluted) / 0.1 == pytest.approx((0.5 + LN2 - 1) * 5 / 8, abs=1e-6)


def test_logged_diagnostics_are_response_token_means():
    out = _loss(entropy_coeff=0.0)(_batch())  # the entropy is logged without a bonus
    ratios = [1.25, 1.0, 5 / 6, 1.25, 5 / 6]
    assert float(out.kl_approx) == pytest.approx(sum(r - 1 - math.log(r) for r in ratios) / 5, abs=1e-6)
    assert float(out.clip_fraction) == pytest.approx(2 / 5, abs=1e-6)
    assert float(out.entropy) == pytest.approx(LN2, abs=1e-6)


def test_gradient_flows_only_through_unclipped_valid_tokens():
    loss = _loss(kl_coef=0.0)
    out = loss(_batch())
    out.loss_objective.backward()
    grad = loss.actor_network.logits.grad  # [2, 4, 2]
    # clipped tokens (ratio 1.25 with A>0 at row 0 pos 0) and padding get no gradient
    assert torch.all(grad[0, 0] == 0) and torch.all(grad[0, 3] == 0) and torch.all(grad[1, 2:] == 0)
    # row 1 pos 0 has ratio 1.25 and A<0: min picks the unclipped term, so it has a gradient
    assert grad[1, 0].abs().sum() > 0 and grad[0, 1].abs().sum() > 0


def test_named_parameters_takes_torchs_remove_duplicate_keyword():
    """FSDP's whole-state checkpoint calls named_parameters(remove_duplicate=False): torchrl's
    LossModule refuses the keyword (this fails once torchrl takes it, and the override can go)."""
    import inspect

    from torchrl.objectives import LossModule

    assert "remove_duplicate" not in inspect.signature(LossModule.named_parameters).parameters
    loss = _loss()
    loss.alias = loss.actor_network  # the same parameter under a second name
    assert [n for n, _ in loss.named_parameters()] == ["actor_network.logits"]
    assert [n for n, _ in loss.named_parameters(remove_duplicate=False)] == ["actor_network.logits", "alias.logits"]

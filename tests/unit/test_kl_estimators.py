"""k3 and the policy KL: hand-computed values, edge cases and properties (hypothesis)."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tensordict import TensorDict

from plmods.algos.kl import k3, policy_kl


@pytest.mark.parametrize(
    ("d", "expected"),
    [
        (0.0, 0.0),  # identical policies: exactly 0
        (math.log(2.0), 2.0 - 1.0 - math.log(2.0)),  # 0.306853
        (-math.log(2.0), 0.5 - 1.0 + math.log(2.0)),  # 0.193147
        (1e-8, 5e-17),  # tiny d: d^2 / 2, where exp(d) - 1 - d gives 0 or noise
    ],
)
def test_k3_hand_computed(d, expected):
    value = float(k3(torch.tensor(d, dtype=torch.float64)))
    assert value == pytest.approx(expected, rel=1e-6, abs=1e-30)


def test_k3_of_float32_tiny_ratios_is_not_cancelled():
    d = torch.tensor([1e-4, -1e-4, 3e-5])
    torch.testing.assert_close(k3(d), d**2 / 2, rtol=2e-2, atol=0)
    # the cancelling form loses it: exp(d) - 1 - d in float32
    assert not torch.allclose(d.exp() - 1 - d, d**2 / 2, rtol=1e-2, atol=0)


@given(
    st.lists(
        st.floats(min_value=-20.0, max_value=20.0, allow_nan=False, allow_subnormal=False, width=32),
        min_size=1,
        max_size=64,
    )
)
def test_k3_is_never_negative_zero_at_zero_and_positive_away_from_it(values):
    d = torch.tensor(values, dtype=torch.float32)
    out = k3(d)
    assert (out >= 0).all()
    assert (out[d == 0] == 0).all()
    assert (out[d.abs() > 1e-3] > 0).all()


# ---- policy_kl: the k3 fallback, for a pair torch has no analytic KL for ----
class _StudentTActor:
    """pi = StudentT(df=1, loc, 1), i.e. a Cauchy, but torch registers no KL for StudentT pairs; the
    batch's ``loc`` is pi_old's, the actor's current loc is ``loc``."""

    in_keys = ["observation"]

    def __init__(self, loc: float) -> None:
        self.loc = loc

    def build_dist_from_params(self, td):
        return torch.distributions.StudentT(1.0, td["loc"], torch.ones_like(td["loc"]))

    def get_dist(self, td):
        n = td.batch_size[0]
        return torch.distributions.StudentT(1.0, torch.full((n,), self.loc), torch.ones(n))


def test_policy_kl_without_an_analytic_kl_is_k3_at_the_batch_actions():
    old = torch.distributions.StudentT(1.0, torch.zeros(2), torch.ones(2))
    action = torch.tensor([0.0, 1.0])
    batch = TensorDict(
        {"observation": torch.zeros(2, 1), "loc": torch.zeros(2), "action": action,
         "action_log_prob": old.log_prob(action)},
        batch_size=[2],
    )  # fmt: skip
    with pytest.raises(NotImplementedError):
        torch.distributions.kl_divergence(old, old)
    # Cauchy density 1 / (pi (1 + (x - loc)^2)): r = q / p = 1 / 1.25 = 0.8 at x = 0, 2 / 1.25 = 1.6 at x = 1
    # k3 = (r - 1) - log r: 0.0231435513 and 0.1299963690, mean 0.0765699610
    expected = ((0.8 - 1 - math.log(0.8)) + (1.6 - 1 - math.log(1.6))) / 2
    assert float(policy_kl(_StudentTActor(0.5), batch)) == pytest.approx(expected, rel=1e-5)

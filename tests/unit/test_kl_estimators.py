"""k3 and the policy KL: hand-computed values, edge cases and properties (hypothesis)."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from plmods.algos.kl import k3


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

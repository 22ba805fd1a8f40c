"""RefPolicySync in a plain Lightning project: hard and soft syncs, timing, resume."""

import re

import pytest
import torch
from lightning import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader

from plmods.callbacks import RefPolicySync, mix_into
from plmods.errors import ConfigError


class TwoPolicies(LightningModule):
    """Any module with `policy` and `ref_policy`: one SGD step per batch moves every weight by +1."""

    def __init__(self) -> None:
        super().__init__()
        self.policy = nn.Linear(2, 2)
        self.ref_policy = nn.Linear(2, 2).requires_grad_(False)
        with torch.no_grad():
            for p in self.policy.parameters():
                p.fill_(1.0)
            for p in self.ref_policy.parameters():
                p.fill_(0.0)

    def training_step(self, batch, batch_idx):
        return -sum(p.sum() for p in self.policy.parameters())  # gradient -1: SGD lr 1 adds +1

    def configure_optimizers(self):
        return torch.optim.SGD(self.policy.parameters(), lr=1.0)

    def train_dataloader(self):
        return DataLoader(torch.zeros(4, 1), batch_size=1)


def _value(module: nn.Module) -> float:
    values = torch.cat([p.flatten() for p in module.parameters()])
    assert torch.allclose(values, values[0])
    return float(values[0])


def _fit(module, callback, tmp_path, max_steps, ckpt_path=None):
    trainer = Trainer(
        max_steps=max_steps, callbacks=[callback], logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer


def test_mix_into_hard_and_soft():
    ref, policy = nn.Linear(3, 1), nn.Linear(3, 1)
    expected = [0.25 * p + 0.75 * r for p, r in zip(policy.parameters(), ref.parameters(), strict=True)]
    mix_into(ref, policy, 0.25)
    for got, want in zip(ref.parameters(), expected, strict=True):
        torch.testing.assert_close(got, want)
    mix_into(ref, policy, 1.0)
    assert all(torch.equal(r, p) for r, p in zip(ref.parameters(), policy.parameters(), strict=True))


def test_mix_into_rejects_different_structures():
    with pytest.raises(ValueError, match="different parameter structures"):
        mix_into(nn.Linear(2, 2), nn.Linear(3, 2), 1.0)


def test_hard_copy_every_tau_steps(tmp_path):
    module, sync = TwoPolicies(), RefPolicySync(sync_every=2, alpha=1.0)
    _fit(module, sync, tmp_path, max_steps=3)
    # policy after steps 1, 2, 3: 2, 3, 4; a copy after step 2 only
    assert _value(module.policy) == 4.0
    assert _value(module.ref_policy) == 3.0
    assert sync.num_syncs == 1 and sync.last_sync_step == 2


def test_soft_mix_every_step(tmp_path):
    module, sync = TwoPolicies(), RefPolicySync(sync_every=1, alpha=0.5)
    _fit(module, sync, tmp_path, max_steps=2)
    # ref: 0 -> 0.5 * 2 + 0.5 * 0 = 1 -> 0.5 * 3 + 0.5 * 1 = 2
    assert _value(module.ref_policy) == 2.0
    assert sync.num_syncs == 2


def test_state_survives_a_checkpoint_resume(tmp_path):
    module, sync = TwoPolicies(), RefPolicySync(sync_every=3, alpha=1.0)
    trainer = _fit(module, sync, tmp_path, max_steps=4)  # copy at step 3 (policy 4)
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed_module, resumed = TwoPolicies(), RefPolicySync(sync_every=3, alpha=1.0)
    _fit(resumed_module, resumed, tmp_path, max_steps=6, ckpt_path=ckpt)
    # restored last_sync_step=3: the next copy is at step 6 (policy 7), not at step 5
    assert resumed.num_syncs == 2 and resumed.last_sync_step == 6
    assert _value(resumed_module.ref_policy) == 7.0


def test_needs_a_module_with_policy_and_reference(tmp_path):
    class NoRef(TwoPolicies):
        def __init__(self):
            super().__init__()
            self.ref_policy = None

    with pytest.raises(ConfigError, match=r"needs a LightningModule with a reference policy .*, or `policy` and `ref_policy` modules\); NoRef has none"):
        _fit(NoRef(), RefPolicySync(), tmp_path, max_steps=1)


@pytest.mark.parametrize("kwargs, message", [(dict(sync_every=0), "sync_every must be >= 1"), (dict(alpha=0.0), "alpha must be in")])
def test_bad_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RefPolicySync(**kwargs)


def test_defaults_and_bounds():
    callback = RefPolicySync()
    assert (callback.sync_every, callback.alpha) == (64, 1.0)
    RefPolicySync(sync_every=1, alpha=1.0)  # both bounds are valid
    for kwargs, message in (({"alpha": 1.5}, "alpha must be in (0, 1], got 1.5."), ({"sync_every": 0}, "sync_every")):
        with pytest.raises(ConfigError, match="^" + re.escape(message)):
            RefPolicySync(**kwargs)

"""AdaptiveKL: the two rules against hand-worked numbers, and the callback driving a plain
LightningModule (not a plmods one) through a real Trainer, including save -> resume.

ppo rule (delta = 0.01): halve below delta / 1.5 = 0.00666..., double above 1.5 * delta = 0.015.
proportional rule: beta * (1 + clip(d / delta - 1, -c, c) * n_steps / horizon).
"""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from plmods.callbacks.kl_adaptive import AdaptiveKL, next_kl_coef
from plmods.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

DELTA = 0.01


def exact(value: float):
    return pytest.approx(value, rel=1e-12, abs=0)


@pytest.mark.parametrize(
    ("measured", "expected"),
    [
        (0.0, 0.5),
        (0.005, 0.5),
        (0.0066, 0.5),
        (math.nextafter(DELTA / 1.5, 0.0), 0.5),  # just below delta / 1.5: halved
        (DELTA / 1.5, 1.0),  # at delta / 1.5 (not strictly below): kept
        (0.0067, 1.0),
        (0.01, 1.0),
        (0.015, 1.0),  # at 1.5 * delta (0.015 == 1.5 * 0.01 in binary too): kept
        (math.nextafter(0.015, 1.0), 2.0),  # just above 1.5 * delta: doubled
        (0.0151, 2.0),
        (0.02, 2.0),
        (-0.001, 0.5),  # approximate KL estimators can dip below 0
    ],
)
def test_ppo_rule(measured, expected):
    assert 1.5 * DELTA == 0.015
    assert next_kl_coef(1.0, measured, DELTA, "ppo") == expected
    # the rule is multiplicative: scaling beta scales the result
    assert next_kl_coef(0.3, measured, DELTA, "ppo") == exact(0.3 * expected)


@pytest.mark.parametrize(
    ("measured", "n_steps", "expected"),
    [
        (6.0, 256, 0.5),  # e = 0
        (9.0, 256, 0.50256),  # e = clip(0.5) = 0.2: 0.5 * (1 + 0.2 * 256 / 10000)
        (3.0, 256, 0.49744),  # e = clip(-0.5) = -0.2: 0.5 * (1 - 0.2 * 256 / 10000)
        (6.6, 256, 0.50128),  # e = 0.1: 0.5 * (1 + 0.1 * 256 / 10000)
        (5.4, 256, 0.49872),  # e = -0.1
        (7.2, 256, 0.50256),  # e = 0.2, right at the clip
        (0.0, 256, 0.49744),  # e = -1 -> -0.2
        (9.0, 10_000, 0.6),  # n_steps == horizon: beta * (1 + e)
        (9.0, 1, 0.50001),  # 0.5 * (1 + 0.2 / 10000)
    ],
)
def test_proportional_rule(measured, n_steps, expected):
    got = next_kl_coef(
        0.5, measured, 6.0, "proportional", horizon=10_000, n_steps=n_steps, proportional_clip=0.2
    )
    assert got == exact(expected)


def test_proportional_clip_is_a_setting():
    # d = 9, delta = 6: e = 0.5 with c = 1 (not clipped): 0.5 * (1 + 0.5 * 100 / 1000) = 0.525
    got = next_kl_coef(0.5, 9.0, 6.0, "proportional", horizon=1000, n_steps=100, proportional_clip=1.0)
    assert got == exact(0.525)


@pytest.mark.parametrize("measured", [math.nan, math.inf])
def test_non_finite_kl_raises(measured):
    with pytest.raises(ValueError, match="measured_kl must be finite"):
        next_kl_coef(1.0, measured, DELTA, "ppo")


def test_unknown_rule_raises():
    with pytest.raises(ValueError, match="rule must be one of ppo, proportional, got 'adaptive'"):
        next_kl_coef(1.0, 0.01, DELTA, "adaptive")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_kl": -1}, "target_kl must be > 0, got -1."),
        ({"target_kl": 0.0}, "target_kl must be > 0, got 0.0."),
        (
            {"rule": "adaptive"},
            "rule must be one of ppo, proportional, got 'adaptive'.",
        ),
        ({"min_kl_coef": 0.0}, "min_kl_coef must be > 0, got 0.0."),
        (
            {"min_kl_coef": 2.0, "max_kl_coef": 1.0},
            "max_kl_coef=1.0 must be >= min_kl_coef=2.0.",
        ),
        (
            {"initial_kl_coef": 200.0},
            "initial_kl_coef must be null or in [min_kl_coef, max_kl_coef] = "
            "[0.0001, 100.0], got 200.0.",
        ),
        ({"horizon": 0}, "horizon must be >= 1, got 0."),
        ({"proportional_clip": 0.0}, "proportional_clip must be > 0, got 0.0."),
        ({"interval": "batch"}, "interval must be one of epoch, step, got 'batch'."),
        ({"log_key": ""}, "log_key must be a non-empty string, got ''."),
        ({"steps_per_update": 0}, "steps_per_update must be >= 1 or null, got 0."),
    ],
)
def test_constructor_rejects_bad_settings(kwargs, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        AdaptiveKL(**kwargs)


# ---- the callback's hooks called directly (no Trainer): clamping and state --------------------


class FakeModule:
    """The protocol and nothing else, plus a record of ``log`` calls."""

    def __init__(self, kl_coef: float, measured_kl=None) -> None:
        self.kl_coef = kl_coef
        self.measured_kl = measured_kl
        self.logged: list[tuple[str, float, dict]] = []

    def log(self, key, value, **kwargs) -> None:
        self.logged.append((key, value, kwargs))


def _one_iteration(callback: AdaptiveKL, module: FakeModule, measured, steps: int = 1) -> None:
    trainer = SimpleNamespace(global_step=0, world_size=1)
    callback.setup(trainer, module, "fit")
    callback.on_train_start(trainer, module)
    trainer.global_step = steps
    module.measured_kl = measured
    callback.on_train_epoch_end(trainer, module)


@pytest.mark.parametrize(
    ("kwargs", "beta", "measured", "expected"),
    [
        ({}, 60.0, 1.0, 100.0),  # ppo doubles to 120, clamped to the default max 100
        ({}, 50.0, 1.0, 100.0),  # doubles to exactly max: kept
        ({}, 1.5e-4, 0.0, 1e-4),  # halves to 7.5e-5, clamped to the default min 1e-4
        ({"min_kl_coef": 0.4, "max_kl_coef": 3.0}, 2.0, 1.0, 3.0),
        ({"min_kl_coef": 0.4, "max_kl_coef": 3.0}, 0.6, 0.0, 0.4),
        ({"min_kl_coef": 0.4, "max_kl_coef": 3.0}, 1.0, 0.0, 0.5),  # inside the bounds
        # proportional with n_steps = 10 * horizon: 1 * (1 - 0.2 * 10) = -1 -> min
        ({"rule": "proportional", "horizon": 1, "steps_per_update": 10}, 1.0, 0.0, 1e-4),
    ],
)
def test_beta_is_clamped_to_bounds(kwargs, beta, measured, expected):
    callback = AdaptiveKL(target_kl=DELTA, **kwargs)
    module = FakeModule(beta)
    _one_iteration(callback, module, measured)
    assert module.kl_coef == exact(expected)
    assert callback.kl_coef == exact(expected)
    assert module.logged == [("train/kl_coef", callback.kl_coef, {"batch_size": 1})]


def test_none_measured_kl_changes_nothing():
    callback = AdaptiveKL(target_kl=DELTA, initial_kl_coef=1.0)
    module = FakeModule(7.0)
    _one_iteration(callback, module, None)
    assert module.kl_coef == 1.0 and callback.kl_coef == 1.0  # initial_kl_coef assigned, then kept
    assert callback.num_updates == 0 and callback.history == []
    assert module.logged == []


def test_n_steps_defaults_to_optimizer_steps_since_last_adaptation():
    # proportional, delta 6, d 9 -> e = 0.2, horizon 100; 5 optimizer steps: 0.5 * (1 + 0.2 * 5 / 100)
    callback = AdaptiveKL(target_kl=6.0, rule="proportional", horizon=100)
    module = FakeModule(0.5)
    _one_iteration(callback, module, 9.0, steps=5)
    assert callback.kl_coef == exact(0.505)
    assert callback.history == [(5, 9.0, callback.kl_coef)]


def test_state_dict_round_trip_keeps_the_modules_beta_over_initial_kl_coef():
    source = AdaptiveKL(target_kl=DELTA, initial_kl_coef=1.0)
    _one_iteration(source, FakeModule(1.0), 0.02, steps=3)  # doubled: 2.0
    state = source.state_dict()
    # beta is the module's (its checkpoint holds it): not stored a second time here
    assert state == {"num_updates": 1, "history": [[3, 0.02, 2.0]], "last_step": 3}

    restored = AdaptiveKL(target_kl=DELTA, initial_kl_coef=0.25)
    restored.load_state_dict(state)
    module = FakeModule(2.0)  # as restored from the module's checkpoint
    restored.on_train_start(SimpleNamespace(global_step=3, world_size=1), module)
    assert module.kl_coef == 2.0 and restored.kl_coef == 2.0
    assert restored.num_updates == 1 and restored.history == [(3, 0.02, 2.0)]


def test_missing_protocol_attribute_is_named():
    bare = SimpleNamespace(kl_coef=1.0)
    trainer = SimpleNamespace(global_step=0, world_size=1)
    AdaptiveKL().setup(trainer, bare, "fit")  # a module's own setup may still add it
    with pytest.raises(
        ConfigError, match=r"`measured_kl` attribute .*; SimpleNamespace has no measured_kl\.$"
    ):
        AdaptiveKL().on_train_start(trainer, bare)
    with pytest.raises(ConfigError, match=r"has no kl_coef, measured_kl\.$"):
        AdaptiveKL().on_train_start(trainer, SimpleNamespace())


def test_a_module_without_a_kl_coefficient_is_refused_at_setup():
    none = SimpleNamespace(kl_coef=None, measured_kl=None, algorithm="PPO")
    with pytest.raises(ConfigError, match=r"^callbacks.adaptive_kl adapts a KL coefficient, but this PPO has none"):
        AdaptiveKL().setup(SimpleNamespace(), none, "fit")
    AdaptiveKL().setup(SimpleNamespace(), none, "validate")  # only fitting adapts


# ---- a real Trainer driving a plain LightningModule ------------------------------------------


class KLModule(LightningModule):
    """A linear regression that reports a scripted KL: ``kls[epoch]`` (per="epoch") or
    ``kls[training step index]`` (per="step"), as 0-dim tensors; None means "not measured".
    ``seen`` records beta as training_step sees it at each epoch's first step."""

    def __init__(self, kls, kl_coef: float = 1.0, per: str = "epoch") -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.kls = kls
        self.per = per
        self.kl_coef = kl_coef
        self.measured_kl = None
        self.seen: list[float] = []
        self.calls = 0

    def training_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.seen.append(float(self.kl_coef))
        kl = self.kls[self.current_epoch if self.per == "epoch" else self.calls]
        self.calls += 1
        self.measured_kl = None if kl is None else torch.tensor(kl, dtype=torch.float64)
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    # the module owns beta, so its checkpoint carries it (the protocol's one requirement)
    def on_save_checkpoint(self, checkpoint):
        checkpoint["kl_coef"] = self.kl_coef

    def on_load_checkpoint(self, checkpoint):
        self.kl_coef = checkpoint["kl_coef"]

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(8, 2, generator=g), torch.randn(8, 1, generator=g))
        return DataLoader(data, batch_size=self.batch_size)

    batch_size = 4  # 2 optimizer steps per epoch


def _trainer(max_epochs: int, **kwargs) -> Trainer:
    options = {
        "max_epochs": max_epochs,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "devices": 1,
    }
    return Trainer(**(options | kwargs))


def test_ppo_rule_through_a_trainer():
    # initial 1 (the module's 7 is overwritten); 0.02 -> 2, 0.02 -> 4 -> clamped to 3,
    # 0.001 -> 1.5, 0.01 -> kept, 0.05 -> 3
    module = KLModule([0.02, 0.02, 0.001, 0.01, 0.05], kl_coef=7.0)
    callback = AdaptiveKL(target_kl=DELTA, initial_kl_coef=1.0, max_kl_coef=3.0)
    trainer = _trainer(5, callbacks=[callback])
    trainer.fit(module)
    assert module.seen == [1.0, 2.0, 3.0, 1.5, 1.5]
    assert module.kl_coef == 3.0 and callback.kl_coef == 3.0
    assert float(trainer.callback_metrics["train/kl_coef"]) == 3.0
    assert callback.num_updates == 5
    assert callback.history == [
        (2, 0.02, 2.0),
        (4, 0.02, 3.0),
        (6, 0.001, 1.5),
        (8, 0.01, 1.5),
        (10, 0.05, 3.0),
    ]


def test_proportional_rule_through_a_trainer_counts_steps_across_skipped_iterations():
    # 4 optimizer steps per epoch, delta 6, horizon 100, beta read from the module (0.5):
    # d 9: 0.5 * (1 + 0.2 * 4/100) = 0.504;  d 3: 0.504 * (1 - 0.2 * 4/100) = 0.499968;
    # None: skipped;  d 6.6 (e = 0.1), 8 steps since the last adaptation: 0.499968 * 1.008 = 0.503967744
    module = KLModule([9.0, 3.0, None, 6.6], kl_coef=0.5)
    module.batch_size = 2
    callback = AdaptiveKL(target_kl=6.0, rule="proportional", horizon=100)
    trainer = _trainer(4, callbacks=[callback])
    trainer.fit(module)
    assert module.seen == [exact(0.5), exact(0.504), exact(0.499968), exact(0.499968)]
    assert module.kl_coef == exact(0.503967744)
    # Lightning keeps logged values as float32 tensors
    assert trainer.callback_metrics["train/kl_coef"].item() == torch.tensor(0.503967744).item()
    assert [(s, d) for s, d, _ in callback.history] == [(4, 9.0), (8, 3.0), (16, exact(6.6))]
    assert [b for _, _, b in callback.history] == [exact(0.504), exact(0.499968), exact(0.503967744)]


def test_step_interval_adapts_after_every_training_step():
    # 4 steps in one epoch: 0.02 -> 2, None -> kept, 0.001 -> 1, 0.05 -> 2
    module = KLModule([0.02, None, 0.001, 0.05], per="step")
    module.batch_size = 2
    callback = AdaptiveKL(target_kl=DELTA, initial_kl_coef=1.0, interval="step", log_key="kl/beta")
    trainer = _trainer(1, callbacks=[callback])
    trainer.fit(module)
    assert callback.history == [(1, 0.02, 2.0), (3, 0.001, 1.0), (4, 0.05, 2.0)]
    assert module.kl_coef == 2.0
    assert float(trainer.callback_metrics["kl/beta"]) == 2.0
    assert "train/kl_coef" not in trainer.callback_metrics


def test_nothing_measured_through_a_trainer():
    module = KLModule([None, None], kl_coef=0.7)
    callback = AdaptiveKL(target_kl=DELTA)
    trainer = _trainer(2, callbacks=[callback])
    trainer.fit(module)
    assert module.kl_coef == 0.7 and callback.kl_coef == 0.7 and callback.num_updates == 0
    assert "train/kl_coef" not in trainer.callback_metrics


def test_beta_survives_save_and_resume(tmp_path):
    kls = [0.02, 0.02, 0.001, 0.05, 0.05]
    first = AdaptiveKL(target_kl=DELTA, initial_kl_coef=1.0)
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path,
        filename="last",
        monitor=None,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    _trainer(3, callbacks=[first, checkpoint], enable_checkpointing=True).fit(KLModule(kls))
    assert first.kl_coef == 2.0  # 1 -> 2 -> 4 -> 2

    # new everything; the new initial_kl_coef (0.5) and the module's own 123 must lose to the checkpoint
    module = KLModule(kls, kl_coef=123.0)
    resumed = AdaptiveKL(target_kl=DELTA, initial_kl_coef=0.5)
    trainer = _trainer(5, callbacks=[resumed])
    trainer.fit(module, ckpt_path=tmp_path / "last.ckpt")
    assert module.seen == [2.0, 4.0]  # epochs 3 and 4 start from the saved beta
    assert resumed.history == [
        (2, 0.02, 2.0),
        (4, 0.02, 4.0),
        (6, 0.001, 2.0),
        (8, 0.05, 4.0),
        (10, 0.05, 8.0),
    ]
    assert resumed.num_updates == 5
    assert module.kl_coef == 8.0 and float(trainer.callback_metrics["train/kl_coef"]) == 8.0


class BufferKLModule(KLModule):
    """Maps ``kl_coef`` onto a float32 buffer of a loss built in ``setup``, as a torchrl loss would
    hold it: the property only works after the module's own setup, which runs after the callback's."""

    def setup(self, stage: str) -> None:
        self.loss = nn.Module()
        self.loss.register_buffer("beta", torch.tensor(1.0))

    @property
    def kl_coef(self) -> float:
        return float(self.loss.beta)

    @kl_coef.setter
    def kl_coef(self, value: float) -> None:
        if hasattr(self, "loss"):
            self.loss.beta.fill_(value)


def test_protocol_through_a_property_onto_a_buffer():
    module = BufferKLModule([0.02, 0.001, 0.05])
    callback = AdaptiveKL(target_kl=DELTA)
    _trainer(3, callbacks=[callback]).fit(module)
    assert module.seen == [1.0, 2.0, 1.0]  # read from the buffer, 0.02 doubles, 0.001 halves
    assert module.loss.beta.item() == 2.0 and callback.kl_coef == 2.0


class NoMeasuredKL(KLModule):
    def __init__(self) -> None:
        super().__init__([0.01])
        del self.measured_kl


def test_missing_protocol_attribute_fails_before_training():
    with pytest.raises(ConfigError, match=r"NoMeasuredKL has no measured_kl\.$"):
        _trainer(1, callbacks=[AdaptiveKL()]).fit(NoMeasuredKL())


# ---- defaults and boundaries found by mutation testing ----
def test_proportional_rule_defaults():
    # horizon 10_000, n_steps 1, c = 0.2: e = clip(9 / 6 - 1) = 0.2 -> 0.5 * (1 + 0.2 / 10_000)
    assert next_kl_coef(0.5, 9.0, 6.0, "proportional") == exact(0.50001)


def test_callback_defaults():
    cb = AdaptiveKL()
    assert (cb.target_kl, cb.rule, cb.initial_kl_coef, cb.min_kl_coef, cb.max_kl_coef, cb.horizon) == (
        0.01, "ppo", None, 1e-4, 100.0, 10_000,
    )
    assert (cb.proportional_clip, cb.interval, cb.log_key, cb.steps_per_update) == (0.2, "epoch", "train/kl_coef", None)
    assert cb.kl_coef is None
    assert cb.state_dict() == {"num_updates": 0, "history": [], "last_step": None}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_kl_coef": 1.0, "max_kl_coef": 1.0},  # max == min is allowed
        {"initial_kl_coef": 1e-4},  # initial at the lower bound
        {"initial_kl_coef": 100.0},  # initial at the upper bound
        {"steps_per_update": 1},
    ],
)
def test_constructor_accepts_boundary_settings(kwargs):
    AdaptiveKL(**kwargs)


def test_kl_coef_is_initial_kl_coef_before_training():
    assert AdaptiveKL(initial_kl_coef=0.3).kl_coef == 0.3


class _Module:
    def __init__(self, kl_coef):
        self.kl_coef, self.measured_kl, self.logged = kl_coef, None, []

    def log(self, key, value, **kwargs):
        self.logged.append((key, value, kwargs))


def _adapt_once(cb, module, measured, start_step, end_step):
    trainer = SimpleNamespace(global_step=start_step, world_size=1)
    cb.setup(trainer, module, "fit")
    cb.on_train_start(trainer, module)
    trainer.global_step = end_step
    module.measured_kl = measured
    cb.on_train_epoch_end(trainer, module)


def test_n_steps_counts_from_the_training_start_step():
    # fresh callback, training starts at global_step 100, adapts at 110: n_steps = 10
    cb = AdaptiveKL(target_kl=6.0, rule="proportional")
    module = _Module(0.5)
    _adapt_once(cb, module, 9.0, 100, 110)
    assert module.kl_coef == exact(0.5001)  # 0.5 * (1 + 0.2 * 10 / 10_000)


@pytest.mark.parametrize("steps", [0, 1])
def test_n_steps_is_at_least_one(steps):
    cb = AdaptiveKL(target_kl=6.0, rule="proportional")
    module = _Module(0.5)
    _adapt_once(cb, module, 9.0, 0, steps)
    assert module.kl_coef == exact(0.50001)  # 0.5 * (1 + 0.2 * 1 / 10_000)


def test_callback_passes_proportional_clip():
    # c = 1: e = 9 / 6 - 1 = 0.5 unclipped; 0.5 * (1 + 0.5 * 100 / 1000) = 0.525 (c = 0.2 gives 0.51)
    cb = AdaptiveKL(target_kl=6.0, rule="proportional", horizon=1000, steps_per_update=100, proportional_clip=1.0)
    module = _Module(0.5)
    _adapt_once(cb, module, 9.0, 0, 1)
    assert module.kl_coef == exact(0.525)


def test_setup_finds_a_kl_coef_held_as_a_buffer():
    # nn.Module resolves buffers dynamically (getattr_static misses them; hasattr finds them)
    class BufferModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("kl_coef", torch.tensor(0.1))
            self.measured_kl = None

    AdaptiveKL().setup(SimpleNamespace(), BufferModule(), "fit")

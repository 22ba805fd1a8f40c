"""W&B mode decision: never prompt, never block."""

import pytest

from plmods.errors import ConfigError
from plmods.loggers import resolve_wandb_mode, wandb_logger


@pytest.fixture(autouse=True)
def no_wandb_env(monkeypatch, tmp_path):
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))


def test_explicit_modes_pass_through():
    for mode in ("online", "offline", "disabled"):
        assert resolve_wandb_mode(mode) == mode


def test_auto_without_key_is_offline():
    assert resolve_wandb_mode("auto") == "offline"


def test_auto_respects_wandb_mode_env(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "disabled"


def test_auto_with_key_but_unreachable_server_is_offline(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    assert resolve_wandb_mode("auto", timeout=0.5) == "offline"


def test_bad_mode_names_setting():
    with pytest.raises(ConfigError, match="logger.mode='sometimes'"):
        resolve_wandb_mode("sometimes")


def test_logger_is_offline_and_keeps_given_id(tmp_path):
    logger = wandb_logger(project="t", save_dir=str(tmp_path), id="abc123")
    assert logger._offline
    assert logger._wandb_init["id"] == "abc123"
    assert logger._wandb_init["resume"] == "allow"


def test_each_module_plots_against_its_own_x_axis():
    """Control metrics against frames, GRPO's against iterations (against frames, which GRPO
    never logs, every GRPO point landed at x = 0)."""
    from types import SimpleNamespace

    from plmods.algos import ControlModule, GRPOModule
    from plmods.loggers import set_x_axis

    assert (ControlModule.x_axis, GRPOModule.x_axis) == ("frames", "iteration")
    calls = []
    logger = SimpleNamespace(experiment=SimpleNamespace(define_metric=lambda *a, **k: calls.append((a, k))))
    set_x_axis(logger, GRPOModule.x_axis)
    assert calls[0] == (("iteration",), {})
    assert {a[0]: k["step_metric"] for a, k in calls[1:]} == {"train/*": "iteration", "val/*": "iteration", "perf/*": "iteration"}

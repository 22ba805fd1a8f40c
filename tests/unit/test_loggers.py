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


def test_explicit_offline_and_disabled_pass_through():
    for mode in ("offline", "disabled"):
        assert resolve_wandb_mode(mode) == mode


@pytest.mark.parametrize("how", ["setting", "env"])
def test_online_without_key_falls_back_to_offline_with_one_line(monkeypatch, caplog, how):
    """WANDB_MODE=online (or mode=online) and no key: wandb itself raises; we log offline."""
    if how == "env":
        monkeypatch.setenv("WANDB_MODE", "online")
    with caplog.at_level("WARNING", logger="plmods.loggers"):
        assert resolve_wandb_mode("online" if how == "setting" else "auto") == "offline"
    assert [r.getMessage() for r in caplog.records] == [
        "W&B: no API key found (wandb login, or WANDB_API_KEY): logging offline; upload later with `wandb sync`."
    ]


def test_online_with_key_but_no_network_falls_back_within_the_timeout(monkeypatch):
    import time

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "https://api.wandb.invalid")  # no DNS, as on a machine without network
    start = time.perf_counter()
    assert resolve_wandb_mode("auto", timeout=1.0) == "offline"
    assert time.perf_counter() - start < 2.0


def test_online_with_key_and_answering_server_stays_online(monkeypatch):
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501
    threading.Thread(target=server.handle_request, daemon=True).start()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        assert resolve_wandb_mode("online") == "online"
    finally:
        server.server_close()


def test_a_server_that_accepts_but_never_answers_is_offline(monkeypatch):
    """What a transparent proxy does: the TCP connect succeeds, no HTTP answer comes."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
    try:
        assert resolve_wandb_mode("online", timeout=0.5) == "offline"
    finally:
        silent.close()


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
    with pytest.raises(ConfigError, match="mode='sometimes'"):
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

    from plmods.algos import ControlModule, LMModule
    from plmods.loggers import set_x_axis

    assert (ControlModule.x_axis, LMModule.x_axis) == ("frames", "iteration")
    calls = []
    logger = SimpleNamespace(experiment=SimpleNamespace(define_metric=lambda *a, **k: calls.append((a, k))))
    set_x_axis(logger, LMModule.x_axis)
    assert calls[0] == (("iteration",), {})
    assert {a[0]: k["step_metric"] for a, k in calls[1:]} == {"train/*": "iteration", "val/*": "iteration", "perf/*": "iteration"}


def test_no_anonymous_setting_reaches_wandb(tmp_path):
    """Lightning passes anonymous=None to wandb.init, which then warns on every run; dropped
    through Lightning's private _wandb_init (this test fails when Lightning renames it)."""
    logger = wandb_logger(project="t", save_dir=str(tmp_path), mode="offline")
    assert isinstance(logger._wandb_init, dict) and "project" in logger._wandb_init
    assert "anonymous" not in logger._wandb_init

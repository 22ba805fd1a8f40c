"""Weights & Biases through Lightning's ``WandbLogger``, never blocking a run.

wandb prompts for a key (or hangs on the network) when it cannot log online. We decide the mode
before the logger exists: ``auto`` goes online only with an API key *and* a reachable server,
otherwise offline (``wandb sync`` uploads later). The run id is stored in plmods checkpoints, and
``run.train`` passes it back here on resume so the same W&B run continues.
"""

from __future__ import annotations

import logging
import netrc
import os
import urllib.error
import urllib.request
from typing import Any, Literal
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger

from plmods.errors import ConfigError

__all__ = ["resolve_wandb_mode", "set_x_axis", "wandb_logger"]

log = logging.getLogger(__name__)
_MODES = ("auto", "online", "offline", "disabled")


def _has_api_key(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _reachable(base_url: str, timeout: float) -> bool:
    """The W&B server answers HTTP within ``timeout`` (any status counts). A TCP connect alone
    proves nothing: behind a transparent proxy every address accepts, and wandb then waits ~95 s."""
    try:
        with urllib.request.urlopen(urllib.request.Request(base_url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # URLError, timeouts, resets, TLS failures
        return False


def resolve_wandb_mode(mode: str = "auto", timeout: float = 2.0) -> str:
    """The mode the run can log in. ``offline``/``disabled`` as asked; ``online`` and ``auto``
    (``WANDB_MODE`` when set, else online) go online only with an API key and a server answering
    within ``timeout`` seconds, and otherwise fall back to offline with one line saying so
    (wandb itself would prompt, raise, or retry for about 95 s)."""
    if mode not in _MODES:
        raise ConfigError(f"mode={mode!r} is not one of {list(_MODES)}.")
    if mode == "auto":
        env_mode = os.environ.get("WANDB_MODE")
        mode = {"dryrun": "offline", "run": "online"}.get(env_mode or "", env_mode or "online")
        if mode not in _MODES:
            raise ConfigError(f"WANDB_MODE={env_mode!r} is not one of online, offline, disabled, dryrun.")
    if mode != "online":
        return mode
    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = urlparse(base_url).hostname or "api.wandb.ai"
    if not _has_api_key(host):
        log.warning("W&B: no API key found (wandb login, or WANDB_API_KEY): logging offline; upload later with `wandb sync`.")
        return "offline"
    if not _reachable(base_url, timeout):
        log.warning("W&B: %s could not be reached within %.0f s: logging offline; upload later with `wandb sync`.", host, timeout)
        return "offline"
    return "online"


def wandb_logger(
    project: str = "plmods",
    save_dir: str = ".",
    mode: Literal["auto", "online", "offline", "disabled"] = "auto",
    name: str | None = None,
    id: str | None = None,  # noqa: A002 - wandb's own argument name
    group: str | None = None,
    tags: list[str] | None = None,
    log_model: bool = False,
    **kwargs: Any,
) -> WandbLogger:
    """A ``WandbLogger`` whose mode is decided up front (see :func:`resolve_wandb_mode`).

    Args:
        project: W&B project.
        save_dir: where the local ``wandb/`` run directory goes (the Hydra run dir by default).
        mode: ``auto``, ``online``, ``offline`` or ``disabled``.
        name: run name.
        id: run id to resume (set from the checkpoint by ``run.train`` on resume).
        group: run group (e.g. a sweep).
        tags: run tags.
        log_model: upload checkpoints as artifacts (online only).
    """
    resolved = resolve_wandb_mode(mode)
    os.environ.setdefault("WANDB_SILENT", "true")
    # the mode decided here is final: wandb must not override it from WANDB_MODE (online -> offline fallback)
    if os.environ.get("WANDB_MODE") and os.environ["WANDB_MODE"] != resolved:
        os.environ["WANDB_MODE"] = resolved
    logger = WandbLogger(
        project=project,
        save_dir=save_dir,
        name=name,
        id=id,
        group=group,
        tags=list(tags) if tags else None,
        offline=resolved == "offline",
        mode=resolved,
        log_model=log_model and resolved == "online",
        **kwargs,
    )
    logger.plmods_mode = resolved  # the start-up table shows it
    _drop_anonymous(logger)
    return logger


def _drop_anonymous(logger: WandbLogger) -> None:
    """Lightning 2.6 always passes ``anonymous`` to ``wandb.init`` (None when unset), and wandb
    >= 0.19 warns on every run that the setting has no effect. The one place plmods touches a
    private Lightning attribute (``_wandb_init``, the keyword arguments of the deferred
    ``wandb.init``); tests/unit/test_loggers.py fails when Lightning renames it."""
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)


def set_x_axis(logger: WandbLogger, step_metric: str) -> None:
    """Plot plmods metrics against ``step_metric`` instead of optimizer steps: ``frames`` for the
    control modules (RL's x-axis), ``iteration`` for GRPO (which has no frames; against
    ``frames`` its metrics all landed at x = 0). Each module names its own (``x_axis``)."""
    experiment = logger.experiment
    if not hasattr(experiment, "define_metric"):  # rank > 0 gets a dummy experiment
        return
    experiment.define_metric(step_metric)
    for prefix in ("train", "val", "perf"):
        experiment.define_metric(f"{prefix}/*", step_metric=step_metric, step_sync=True)

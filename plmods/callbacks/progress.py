"""A Rich progress bar that speaks in policy iterations, frames, returns and rewards."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichProgressBar
from typing_extensions import override

__all__ = ["RLProgressBar"]

# logged key -> short label on the bar
_SHOWN = {
    "frames": "frames",
    "train/episode_return": "return",
    "val/episode_return": "val_return",
    "train/reward": "reward",
    "val/accuracy": "val_acc",
    "train/kl_coef": "kl_coef",
}


class RLProgressBar(RichProgressBar):
    """``RichProgressBar`` labelled "Iteration k" with frames, training and evaluation return
    (control) or training reward and held-out accuracy (GRPO).

    Works with any module that logs those keys (``prog_bar=True`` or not).
    """

    @override
    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        metrics = trainer.callback_metrics
        shown: dict[str, Any] = {}
        for key, label in _SHOWN.items():
            if key in metrics:
                value = float(metrics[key])
                shown[label] = f"{value:,.0f}" if key == "frames" else f"{value:.4g}"
        return shown

    @override
    def _get_train_description(self, current_epoch: int) -> str:
        return f"Iteration {current_epoch + 1}"

"""A Rich progress bar that speaks in policy iterations, frames, returns and rewards."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichProgressBar
from typing_extensions import override

__all__ = ["RLProgressBar"]

# logged key -> short label on the bar (the first present of each group of keys)
_SHOWN: tuple[tuple[tuple[str, ...], str], ...] = (
    (("frames",), "frames"),
    (("train/episode_return",), "return"),
    (("val/episode_return",), "val_return"),
    (("train/reward",), "reward"),
    (("val/accuracy",), "val_acc"),
    (("train/kl", "train/kl_to_ref", "train/approx_kl"), "kl"),
    (("perf/fps",), "fps"),
    (("perf/generated_tokens_per_s",), "tok/s"),
)


class RLProgressBar(RichProgressBar):
    """``RichProgressBar`` labelled "Iteration k" with frames, training and evaluation return
    (control) or training reward and held-out accuracy (GRPO), the KL (measured post-update
    ``train/kl``, GRPO's ``train/kl_to_ref``, else PPO's ``approx_kl``), β where the module
    has a KL penalty, and throughput (frames/s, generated tokens/s).

    Works with any module that logs those keys (``prog_bar=True`` or not).
    """

    @override
    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        metrics = trainer.callback_metrics
        shown: dict[str, Any] = {}
        for keys, label in _SHOWN:
            key = next((k for k in keys if k in metrics), None)
            if key is None:
                continue
            value = float(metrics[key])
            shown[label] = f"{value:,.0f}" if label in ("frames", "fps", "tok/s") else f"{value:.4g}"
        beta = _kl_coef(pl_module, metrics)
        if beta is not None:
            shown["β"] = f"{beta:.4g}"
        return shown

    @override
    def _get_train_description(self, current_epoch: int) -> str:
        return f"Iteration {current_epoch + 1}"


def _kl_coef(pl_module: Any, metrics: dict[str, Any]) -> float | None:
    """β now: the module's own (what the next iteration trains with), else the logged one; None
    for a module without a KL penalty (PPO-clip raises, GRPO with β = 0 has none)."""
    try:
        beta = getattr(pl_module, "kl_coef", None)
    except AttributeError:
        beta = None
    if beta is None and "train/kl_coef" in metrics:
        beta = metrics["train/kl_coef"]
    if beta is None or float(beta) == 0.0:
        return None
    return float(beta)

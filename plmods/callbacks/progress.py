"""A Rich progress bar that speaks in policy iterations, frames, returns and rewards."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichProgressBar
from rich.progress import BarColumn, ProgressColumn, Task, TextColumn
from rich.progress_bar import ProgressBar
from rich.text import Text
from typing_extensions import override

from plmods.protocols import HasBudget, KLControlled

__all__ = ["RLProgressBar"]


def _budget(task: Task) -> tuple[float, float]:
    """(spent, total) of the run's budget when the bar was given one, else the task's own count.
    A field of the task: Lightning resets the count to 0 of 1 batch at every epoch start."""
    spent, total = task.fields.get("budget", (task.completed, task.total or 1.0))
    return min(spent, total), max(total, 1e-12)


class BudgetBarColumn(BarColumn):
    """Rich's bar, filled with the run's budget (frames or iterations spent of the total)."""

    def render(self, task: Task) -> ProgressBar:
        spent, total = _budget(task)
        return ProgressBar(
            total=total, completed=spent, width=None if self.bar_width is None else max(1, self.bar_width),
            pulse=False, animation_time=task.get_time(), style=self.style, complete_style=self.complete_style,
            finished_style=self.finished_style, pulse_style=self.pulse_style,
        )  # fmt: skip


class BudgetPercentColumn(ProgressColumn):
    """The run's budget spent, in percent."""

    def __init__(self, style: Any = None) -> None:
        self.style = style
        super().__init__()

    def render(self, task: Task) -> Text:
        spent, total = _budget(task)
        return Text(f"{100.0 * spent / total:>3.0f}%", style=self.style or "")


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

    The bar fills with the run's budget, not with the epoch's one batch: frames of
    ``total_frames`` (control) or iterations of ``total_iterations`` (GRPO), from the module's
    ``budget()`` (Lightning's batch count and it/s read 1/1 and 0.00it/s every iteration).

    Works with any module that logs those keys (``prog_bar=True`` or not).
    """

    @override
    def configure_columns(self, trainer: Any) -> list:
        theme = self.theme
        return [
            TextColumn("[progress.description]{task.description}"),
            BudgetBarColumn(complete_style=theme.progress_bar, finished_style=theme.progress_bar_finished,
                            pulse_style=theme.progress_bar_pulse),
            BudgetPercentColumn(style=theme.batch_progress),
        ]  # fmt: skip

    @override
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self.show_budget(pl_module)

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.show_budget(pl_module)

    def show_budget(self, pl_module: Any) -> None:
        """Give the training bar ``pl_module.budget()`` (spent, total), when the module has one."""
        budget = pl_module.budget() if isinstance(pl_module, HasBudget) else None
        if budget is None or self.progress is None or self.train_progress_bar_id is None:
            return
        self.progress.update(self.train_progress_bar_id, budget=(float(budget[0]), float(budget[1])))
        self.refresh()

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
    for a module without a KL penalty."""
    beta = pl_module.kl_coef if isinstance(pl_module, KLControlled) else None
    if beta is None and "train/kl_coef" in metrics:
        beta = metrics["train/kl_coef"]
    if beta is None or float(beta) == 0.0:
        return None
    return float(beta)

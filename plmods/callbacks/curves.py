"""``Curves``: one PNG of the run's learning curves, written when fit ends (rank 0).

Control modules: evaluation return (``module.val_history``) and training return against
``frames``; GRPO: held-out accuracy and training reward against ``iteration``; below them a KL
panel and a beta panel when those were logged. The training rows are collected by the callback
itself, once per iteration, and checkpointed with it, so a resumed run plots its whole history.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from plmods.callbacks.episode_video import output_dir
from plmods.errors import require
from plmods.protocols import Evaluated

__all__ = ["Curves", "plot_curves", "curve_panels", "COLOURS", "TRAIN_KEYS", "KL_KEYS"]

# what the callback records from trainer.callback_metrics after every iteration (when present)
TRAIN_KEYS = (
    "frames",
    "train/episode_return",
    "train/reward",
    "train/kl",
    "train/kl_to_ref",
    "train/approx_kl",
    "train/kl_coef",
)
# the KL panel shows the first of these that was logged: PPO-KL's post-update KL, GRPO's KL to
# the reference (what beta weighs), else the k3 estimate between the old and the new policy
KL_KEYS = ("train/kl", "train/kl_to_ref", "train/approx_kl")

# fixed line colours (tests look for their pixels): evaluation, training, KL, beta
COLOURS = {"val": "#1f77b4", "train": "#ff7f0e", "kl": "#2ca02c", "beta": "#d62728"}

_PANEL_HEIGHT = 2.6  # inches per panel: the figure grows with the panels it holds
_WIDTH = 7.0
_DPI = 100


def _points(rows: Sequence[dict[str, Any]], x_axis: str, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        x, y = row.get(x_axis), row.get(key)
        if x is None or y is None:
            continue
        x, y = float(x), float(y)
        if math.isfinite(x) and math.isfinite(y):
            xs.append(x)
            ys.append(y)
    return xs, ys


def _has(rows: Sequence[dict[str, Any]], x_axis: str, key: str) -> bool:
    return bool(_points(rows, x_axis, key)[0])


def curve_panels(history: Sequence[dict[str, Any]], val_history: Sequence[dict[str, Any]], x_axis: str) -> list[dict[str, Any]]:
    """The panels ``plot_curves`` draws: ``{"title", "ylabel", "lines": [(label, rows, key, colour)]}``
    each, only those with something to draw."""
    panels: list[dict[str, Any]] = []
    score: list[tuple[str, Sequence[dict[str, Any]], str, str]] = []
    if _has(val_history, x_axis, "val/episode_return"):
        score.append(("evaluation return", val_history, "val/episode_return", COLOURS["val"]))
    if _has(history, x_axis, "train/episode_return"):
        score.append(("training return", history, "train/episode_return", COLOURS["train"]))
    if score:
        panels.append({"title": "episode return", "ylabel": "return", "lines": score})
    score = []
    if _has(val_history, x_axis, "val/accuracy"):
        score.append(("held-out accuracy", val_history, "val/accuracy", COLOURS["val"]))
    if _has(history, x_axis, "train/reward"):
        score.append(("training reward", history, "train/reward", COLOURS["train"]))
    if score:
        panels.append({"title": "accuracy and reward", "ylabel": "accuracy / reward", "lines": score})
    kl_key = next((key for key in KL_KEYS if _has(history, x_axis, key)), None)
    if kl_key is not None:
        panels.append({"title": "KL", "ylabel": kl_key, "lines": [(kl_key, history, kl_key, COLOURS["kl"])]})
    if _has(history, x_axis, "train/kl_coef"):
        panels.append({"title": "KL coefficient β", "ylabel": "β", "lines": [("β", history, "train/kl_coef", COLOURS["beta"])]})
    return panels


def plot_curves(history: list[dict[str, Any]], val_history: list[dict[str, Any]], x_axis: str, path: str | Path) -> Path:
    """Draw the learning curves of ``history`` (training rows) and ``val_history`` (evaluation
    rows) against ``x_axis`` into the PNG ``path`` (directories created); returns the path.

    One panel per quantity found (``curve_panels``), stacked, each ``_PANEL_HEIGHT`` inches tall:
    return (evaluation and training) for control runs, accuracy and reward for GRPO, KL and beta
    when logged. With nothing to plot it writes a single panel saying so."""
    # the Agg canvas on a Figure of its own: no display, and no pyplot state (or backend) changed
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    panels = curve_panels(history, val_history, x_axis)
    figure = Figure(figsize=(_WIDTH, _PANEL_HEIGHT * max(len(panels), 1)), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    if not panels:
        axes = figure.subplots(1, 1)
        axes.text(0.5, 0.5, "nothing logged yet", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
    else:
        axes_list = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        for axes, panel in zip(axes_list, panels, strict=True):
            for label, rows, key, colour in panel["lines"]:
                xs, ys = _points(rows, x_axis, key)
                axes.plot(xs, ys, color=colour, linewidth=2.0, marker="o" if len(xs) < 30 else None, markersize=4, label=label)
            axes.set_title(panel["title"])
            axes.set_ylabel(panel["ylabel"])
            axes.grid(True, alpha=0.3)
            if len(panel["lines"]) > 1:
                axes.legend(loc="best")
        axes_list[-1].set_xlabel(x_axis)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=_DPI)
    return path


class Curves(Callback):
    """Write ``<dirpath>/<filename>`` at the end of fit (rank 0): the learning curves of the run.

    After every iteration (``on_train_epoch_end``) the callback records, from
    ``trainer.callback_metrics``, whichever of ``frames``, ``train/episode_return``,
    ``train/reward``, ``train/kl``, ``train/kl_to_ref``, ``train/approx_kl`` were logged, with the
    module's ``iteration``, and beta: the module's ``kl_coef`` as the iteration's updates used it
    (read at the end of its training step; ``AdaptiveKL`` changes it at epoch end) when the module
    has one, else ``train/kl_coef`` from the metrics. The evaluation rows are the module's own
    ``val_history``. Plotted against the module's ``x_axis`` (``frames`` or ``iteration``).

    Args:
        filename: the PNG's file name.
        dirpath: its directory; None: the output dir (the parent of the first ``ModelCheckpoint``'s
            ``dirpath``, else ``trainer.default_root_dir``).

    State (checkpointed): the training rows. ``path`` is the PNG written (None before).
    """

    def __init__(self, filename: str = "curves.png", dirpath: str | None = None) -> None:
        super().__init__()
        require(
            isinstance(filename, str) and bool(filename) and "/" not in filename and "\\" not in filename,
            f"filename={filename!r} must be a non-empty file name (no directory).",
        )
        require(dirpath is None or (isinstance(dirpath, str) and bool(dirpath)), f"dirpath={dirpath!r} must be null or a path.")
        self.filename = filename
        self.dirpath = dirpath
        self.history: list[dict[str, float]] = []
        self.path: Path | None = None
        self._kl_coef: float | None = None

    @staticmethod
    def _module_kl_coef(pl_module: LightningModule) -> float | None:
        try:
            value = pl_module.kl_coef
        except AttributeError:  # e.g. ControlModule with a loss that has no beta
            return None
        if isinstance(value, bool) or value is None:
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            return None

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._kl_coef = self._module_kl_coef(pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = trainer.callback_metrics
        iteration = pl_module.iteration if isinstance(pl_module, Evaluated) else trainer.current_epoch + 1
        row: dict[str, float] = {"iteration": float(iteration)}
        for key in TRAIN_KEYS:
            if key in metrics:
                row[key] = float(metrics[key])
        if self._kl_coef is not None:
            row["train/kl_coef"] = self._kl_coef
        self._kl_coef = None
        self.history.append(row)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        directory = Path(self.dirpath) if self.dirpath is not None else output_dir(trainer)
        evaluated = isinstance(pl_module, Evaluated)
        x_axis = pl_module.x_axis if evaluated else "iteration"
        val_history = list(pl_module.val_history) if evaluated else []
        self.path = plot_curves(self.history, val_history, x_axis, directory / self.filename)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(row) for row in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [{str(k): float(v) for k, v in row.items()} for row in state_dict["history"]]

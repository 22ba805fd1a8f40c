"""Small process-level helpers shared by the run function and the modules."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["atomic_directory", "configure_torch", "quiet_design_warnings", "quiet_known_warnings", "rng_state", "set_rng_state"]


def configure_torch(num_threads: int | None = 1) -> None:
    """CPU settings measured to matter here: 1 thread is fastest for small MLPs (2 threads collapse
    when another process holds a core) and denormal flushing avoids 10-40x slow-downs in tiny LMs."""
    if num_threads:
        torch.set_num_threads(num_threads)
    torch.set_flush_denormal(True)


def rng_state() -> dict[str, Any]:
    """Global RNG states (Lightning's Trainer checkpoints do not include them)."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(tuple(state["numpy"]))
    random.setstate(state["python"])


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def quiet_console() -> None:
    """Each log line once, and no tips a user cannot act on (``train.py`` only: a user's own
    program keeps its logging as it is). The ``lightning`` package adds its own console handler
    and still propagates to the root logger, which Hydra has given a handler: every Lightning
    line was printed twice."""
    root = logging.getLogger()
    lightning_logger = logging.getLogger("lightning")
    if root.handlers:
        for handler in list(lightning_logger.handlers):
            if type(handler) is logging.StreamHandler:  # its console handler, not a user's file handler
                lightning_logger.removeHandler(handler)
    # Lightning's advertisement for its cloud logger, printed on every Trainer construction
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropMessages("litlogger"))


def quiet_design_warnings() -> None:
    """Warnings about choices plmods makes on purpose, which no user can act on; filtered by
    message (nothing else) whenever a plmods module is built, in a user's own program too."""
    # our IterableDataset defines __len__ on purpose (one batch per iteration, num_workers=0)
    warnings.filterwarnings("ignore", message=".*IterableDataset. has .__len__. defined.*")
    # before the first evaluation ModelCheckpoint cannot see val/episode_return yet
    warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")
    # VecNormV2 on a batched (vectorised) env: we use it with reduce_batch_dims=True and test it
    warnings.filterwarnings("ignore", message=".*VecNormV2 for containers with non-empty batch-size.*")
    # GRPO keeps its LM in eval mode on purpose (no dropout: sampling and scoring must agree)
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")


def quiet_known_warnings() -> None:
    """Silence warnings that are expected in a plmods run and carry no action for the user."""
    try:  # transformers' per-load progress bars ("Loading weights") would flood the run log
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    quiet_design_warnings()
    # deprecations inside Lightning/torchrl internals, not in plmods code
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchrl")
    warnings.filterwarnings("ignore", category=FutureWarning, module="torchrl")
    # a sharded last.ckpt (trainer=fsdp) is rewritten in place every iteration, as a file would be
    warnings.filterwarnings("ignore", message=".*Detected an existing checkpoint in .*overwriting.*")
    # transformers' own deprecation inside its gradient-checkpointing check (FSDP state-dict path)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing. is deprecated.*")


@contextlib.contextmanager
def atomic_directory(target: Path):
    """Yield a temporary sibling of ``target`` to write into; on success it is renamed to
    ``target`` (a crash never leaves half a directory; if another process got there first, its
    directory is kept and ours removed)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        yield tmp
        try:
            os.replace(tmp, target)
        except OSError:  # another process wrote it first: keep theirs
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

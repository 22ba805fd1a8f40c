"""Callbacks the integration tests add through train.py (``+callbacks.<name>={_target_: ...}``)."""

import os
import signal

from lightning.pytorch.callbacks import Callback


class KillAtIteration(Callback):
    """SIGKILL rank ``rank`` in the middle of iteration ``iteration`` (its data collected, its
    updates not yet run): no handler, no cleanup, as when a machine is lost."""

    def __init__(self, iteration: int, rank: int = 0) -> None:
        self.iteration, self.rank = iteration, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.iteration == self.iteration and trainer.global_rank == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)

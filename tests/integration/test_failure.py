"""A failure mid-run leaves the parameters and the last good checkpoint intact and resumable."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from plmods.algos import ControlModule
from plmods.envs import ControlEnv

ENV = ControlEnv("CartPole-v1", num_envs=4, max_episode_steps=50)
KW = {"frames_per_batch": 64, "minibatch_size": 32, "epochs": 2, "total_frames": 384, "eval_episodes": 2}


class NaNObservationAtIteration3(ControlModule):
    """The third iteration's batch holds NaN observations: the real loss (actor forward, ratio,
    objective) turns NaN on the way to the iteration's first optimizer step."""

    def estimate_advantage(self, batch):
        batch = super().estimate_advantage(batch)
        if self.iteration == 2:
            batch["observation"][..., 0] = float("nan")
        return batch


class Snapshot(Callback):
    """Parameters and last.ckpt bytes as they are when the third iteration starts."""

    def __init__(self, ckpt):
        self.ckpt = ckpt

    def on_train_epoch_start(self, trainer, pl_module):
        if pl_module.iteration == 2:
            self.params = [p.detach().clone() for p in pl_module.loss_module.parameters()]
            self.ckpt_bytes = self.ckpt.read_bytes()


def _fit(module, tmp_path, callbacks=(), **kwargs):
    trainer = L.Trainer(
        max_epochs=6,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=1,
        callbacks=[
            ModelCheckpoint(
                dirpath=tmp_path, filename="last", save_on_train_epoch_end=True, enable_version_counter=False
            ),
            *callbacks,
        ],
    )
    trainer.fit(module, weights_only=False, **kwargs)
    return trainer


def test_nan_loss_never_reaches_the_parameters_or_the_last_checkpoint(tmp_path):
    snapshot = Snapshot(tmp_path / "last.ckpt")
    module = NaNObservationAtIteration3.ppo(ENV, **KW)
    with pytest.raises(FloatingPointError, match="non-finite loss at iteration 2"):
        _fit(module, tmp_path, [snapshot])
    after = list(module.loss_module.parameters())
    assert all(torch.equal(a, b) for a, b in zip(snapshot.params, after, strict=True))
    assert (tmp_path / "last.ckpt").read_bytes() == snapshot.ckpt_bytes
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert ckpt["plmods"]["iteration"] == 2
    resumed = ControlModule.ppo(ENV, **KW)
    _fit(resumed, tmp_path, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.iteration == 6 and resumed.frames == 384

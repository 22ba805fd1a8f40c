"""A failure mid-run leaves the last good checkpoint intact and resumable."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from tensordict import TensorDict

from plmods.algos import PPOModule
from plmods.envs import ControlEnv


class ExplodesAtIteration3(PPOModule):
    def update(self, batch):
        if self.iteration == 2:  # third iteration: the loss turns NaN
            self.total_loss(TensorDict({"loss_objective": torch.tensor(float("nan"))}, []))
        super().update(batch)


def _fit(module, tmp_path, **kwargs):
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
            )
        ],
    )
    trainer.fit(module, weights_only=False, **kwargs)
    return trainer


def test_nan_loss_keeps_last_good_checkpoint(tmp_path):
    env = ControlEnv("CartPole-v1", num_envs=4, max_episode_steps=50)
    kwargs = {
        "frames_per_batch": 64,
        "minibatch_size": 32,
        "ppo_epochs": 2,
        "total_frames": 384,
        "eval_episodes": 2,
    }
    with pytest.raises(FloatingPointError, match="non-finite loss at iteration 2"):
        _fit(ExplodesAtIteration3(env, **kwargs), tmp_path)
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert ckpt["plmods"]["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    module = PPOModule(env, **kwargs)
    _fit(module, tmp_path, ckpt_path=tmp_path / "last.ckpt")
    assert module.iteration == 6 and module.frames == 384

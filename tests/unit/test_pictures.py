"""Pictures people look at: ``Curves`` (a PNG of the learning curves) and ``EpisodeVideo`` (a GIF of
one deterministic episode per N evaluations).

The drawing is checked on its pixels (the fixed line colours are there, a KL panel only when a KL
was logged); the video on a real short CartPole fit: one frame per step plus the reset frame, the
episode as long as the module's own deterministic evaluation says, training results identical
with and without it; a resumed run keeps both callbacks' histories.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image

from plmods.algos import ControlModule
from plmods.callbacks.curves import COLOURS, Curves, curve_panels, plot_curves
from plmods.callbacks.episode_video import EpisodeVideo, output_dir
from plmods.callbacks.kl_adaptive import AdaptiveKL
from plmods.envs import ControlEnv
from plmods.errors import ConfigError
from plmods.rollout.evaluation import first_episode_returns

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CARTPOLE = ControlEnv("CartPole-v1", num_envs=4, max_episode_steps=30)


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])


def _pixels_of(image: np.ndarray, hex_colour: str, tolerance: int = 8) -> int:
    """How many pixels are within ``tolerance`` (per channel) of ``hex_colour``."""
    return int((np.abs(image.astype(int) - _rgb(hex_colour)).max(axis=-1) <= tolerance).sum())


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


# ---------------------------------------------------------------------------------- plot_curves
HISTORY = [{"iteration": float(i), "frames": 64.0 * i, "train/episode_return": 10.0 + 3 * i} for i in range(1, 9)]
VAL_HISTORY = [{"iteration": i, "frames": 64 * i, "val/episode_return": 9.0 + 5 * i} for i in range(1, 9, 2)]


def test_plot_curves_draws_the_returns_and_a_kl_panel_only_when_kl_was_logged(tmp_path):
    plain = plot_curves(HISTORY, VAL_HISTORY, "frames", tmp_path / "sub" / "plain.png")
    assert plain == tmp_path / "sub" / "plain.png" and plain.stat().st_size > 0
    image = _png(plain)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 2  # not a blank canvas
    # both lines are drawn in their colours (a line 2 pt wide covers hundreds of pixels)
    assert _pixels_of(image, COLOURS["val"]) > 200
    assert _pixels_of(image, COLOURS["train"]) > 200
    assert _pixels_of(image, COLOURS["kl"]) == 0 and _pixels_of(image, COLOURS["beta"]) == 0
    assert [p["title"] for p in curve_panels(HISTORY, VAL_HISTORY, "frames")] == ["episode return"]

    with_kl = [row | {"train/kl": 0.01 * i, "train/approx_kl": 0.5, "train/kl_coef": 1.0 / i} for i, row in enumerate(HISTORY, 1)]
    panels = curve_panels(with_kl, VAL_HISTORY, "frames")
    assert [p["title"] for p in panels] == ["episode return", "KL", "KL coefficient β"]
    assert panels[1]["lines"][0][2] == "train/kl"  # the post-update KL wins over approx_kl
    kl_image = _png(plot_curves(with_kl, VAL_HISTORY, "frames", tmp_path / "kl.png"))
    assert kl_image.shape[1] == image.shape[1]  # same width,
    assert kl_image.shape[0] == pytest.approx(3 * image.shape[0], abs=3)  # one panel-height per panel
    assert _pixels_of(kl_image, COLOURS["kl"]) > 200 and _pixels_of(kl_image, COLOURS["beta"]) > 200

    # only approx_kl logged: it is the KL panel
    approx = [row | {"train/approx_kl": 0.5} for row in HISTORY]
    assert [line[2] for p in curve_panels(approx, VAL_HISTORY, "frames") for line in p["lines"]] == [
        "val/episode_return", "train/episode_return", "train/approx_kl",
    ]  # fmt: skip


def test_plot_curves_grpo_rows_against_iterations_and_missing_values(tmp_path):
    history = [{"iteration": float(i), "train/reward": 0.1 * i, "train/kl_to_ref": 0.02} for i in range(1, 6)]
    val = [{"iteration": i, "val/accuracy": 0.2 * i} for i in range(0, 6, 5)]  # before (0) and after
    panels = curve_panels(history, val, "iteration")
    assert [p["title"] for p in panels] == ["accuracy and reward", "KL"]
    # against "frames" (which GRPO rows lack) nothing is plotted
    assert curve_panels(history, val, "frames") == []
    image = _png(plot_curves(history, val, "iteration", tmp_path / "grpo.png"))
    assert _pixels_of(image, COLOURS["val"]) > 100 and _pixels_of(image, COLOURS["train"]) > 100
    # nothing at all: still a (one-panel) picture
    empty = _png(plot_curves([], [], "frames", tmp_path / "empty.png"))
    assert _pixels_of(empty, COLOURS["val"]) == 0 and empty.shape[0] == pytest.approx(image.shape[0] / 2, abs=3)


# ---------------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"every_n_evals": 0}, "every_n_evals=0 must be an integer >= 1"),
        ({"every_n_evals": 1.5}, "every_n_evals=1.5"),
        ({"max_steps": 0}, "max_steps=0"),
        ({"fps": 0}, "fps=0"),
        ({"filename": "a/b"}, "filename='a/b'"),
    ],
)
def test_episode_video_rejects_bad_settings_naming_them(kwargs, named):
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        EpisodeVideo(**kwargs)


def test_curves_rejects_a_filename_with_a_directory():
    with pytest.raises(ConfigError, match="filename='x/curves.png'"):
        Curves(filename="x/curves.png")


# ---------------------------------------------------------------------------------- the video
def _module(seed=0, env=CARTPOLE, build=ControlModule.ppo, **kwargs):
    args = {"frames_per_batch": 64, "minibatch_size": 32, "epochs": 2, "total_frames": 6400, "eval_episodes": 2}
    return build(env, seed=seed, **(args | kwargs))


def _fit(module, tmp_path, callbacks=(), epochs=2, **kwargs):
    options = {
        "max_epochs": epochs, "check_val_every_n_epoch": 1, "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(tmp_path),
    }  # fmt: skip
    trainer = L.Trainer(**(options | kwargs), callbacks=list(callbacks))
    trainer.fit(module)
    return trainer


def _gif(path: str | Path) -> tuple[int, list[int], tuple[int, int]]:
    """Frames, per-frame durations (ms) and size of a GIF."""
    with Image.open(path) as gif:
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
        return gif.n_frames, durations, gif.size


def test_episode_video_records_the_current_policy_without_changing_training(tmp_path):
    """PPO-KL with AdaptiveKL: also gives the curves a KL and a beta to draw."""
    module = _module(build=ControlModule.ppo_kl, kl_coef=1.0)
    video = EpisodeVideo(every_n_evals=1, max_steps=20, fps=50)
    curves = Curves()
    adaptive = AdaptiveKL(target_kl=0.01)
    _fit(module, tmp_path / "with", [video, curves, adaptive])

    # two evaluations during fit (the sanity check does not count), one GIF each, named by iteration
    assert video.evaluations == 2
    assert video.written == [str(tmp_path / "with" / "videos" / f"episode-iter{k}.gif") for k in (1, 2)]
    assert video.state_dict() == {"evaluations": 2, "written": video.written}

    # the last GIF shows the final policy's deterministic episode from seed video.seed: its length
    # is what the module's own evaluation code measures for that start (CartPole: return = steps)
    single = CARTPOLE.make(num_envs=1)
    try:
        length = int(first_episode_returns(single, module.actor, CARTPOLE.episode_limit, seed=video.seed)[0])
    finally:
        single.close()
    assert video.last_steps == min(video.max_steps, length)
    assert video.last_return == video.last_steps  # reward 1 per CartPole step
    frames, durations, size = _gif(video.written[-1])
    assert frames == video.last_steps + 1  # the reset frame, then one per step
    assert durations == [1000 // 50] * frames and size == (600, 400)
    with Image.open(video.written[-1]) as gif:
        assert gif.info.get("loop") == 0
    assert module.actor.training  # put back as it was (the actor trains in train mode)

    # the curves of the same run
    assert curves.path == tmp_path / "with" / "curves.png" and curves.path.stat().st_size > 0
    assert [row["iteration"] for row in curves.history] == [1.0, 2.0]
    assert [row["frames"] for row in curves.history] == [64.0, 128.0]
    assert {"train/episode_return", "train/approx_kl", "train/kl"} <= curves.history[-1].keys()
    assert [row["train/kl"] for row in curves.history] == [d for _, d, _ in adaptive.history]
    # beta as each iteration's updates used it: the initial one, then the first adaptation's
    assert [row["train/kl_coef"] for row in curves.history] == [1.0, adaptive.history[0][2]]
    assert adaptive.history[0][2] != 1.0
    image = _png(curves.path)
    for colour in COLOURS.values():
        assert _pixels_of(image, colour) > 100

    # the same run without the two picture callbacks: the same evaluations and weights, bit for bit
    plain = _module(build=ControlModule.ppo_kl, kl_coef=1.0)
    _fit(plain, tmp_path / "without", [AdaptiveKL(target_kl=0.01)])
    returns = [row["val/episode_return"] for row in module.val_history]
    assert returns == [row["val/episode_return"] for row in plain.val_history]
    for a, b in zip(module.loss_module.parameters(), plain.loss_module.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not (tmp_path / "without" / "videos").exists()


def test_episode_video_stops_at_max_steps_and_honours_dirpath(tmp_path):
    video = EpisodeVideo(max_steps=3, dirpath=str(tmp_path / "clips"), filename="cart")
    module = _module()
    module.actor.eval()
    path = video.record(module, tmp_path / "one.gif")
    assert not module.actor.training  # left as it was
    assert video.last_steps == 3 and _gif(path)[0] == 4
    trainer = SimpleNamespace(checkpoint_callbacks=[], default_root_dir=str(tmp_path))
    assert video._target(trainer, module) == tmp_path / "clips" / "cart-iter0.gif"


def test_recording_runs_the_actor_in_eval_mode_and_leaves_every_global_rng_alone(tmp_path, monkeypatch):
    """Whatever the rendering path draws (torchrl, gymnasium, a stochastic policy) stays inside it."""
    module = _module()
    module.actor.train()
    video = EpisodeVideo(max_steps=2)
    seen = []
    rollout = video.rollout

    def drawing_rollout(pl_module, env):
        seen.append(pl_module.actor.training)
        torch.rand(3), np.random.rand(3), random.random()  # noqa: B018
        return rollout(pl_module, env)

    monkeypatch.setattr(video, "rollout", drawing_rollout)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    video.record(module, tmp_path / "v.gif")
    assert seen == [False] and module.actor.training
    assert torch.equal(states[0], torch.get_rng_state())
    assert np.array_equal(states[1], np.random.get_state()[1]) and states[2] == random.getstate()


def test_the_video_env_normalises_observations_as_evaluation_does(tmp_path):
    """obs_norm: the video env sees the training statistics, frozen, like ``evaluate``'s env."""
    env = ControlEnv("Pendulum-v1", num_envs=4, obs_norm=True, max_episode_steps=20)
    module = _module(env=env, eval_episodes=1)
    _fit(module, tmp_path, epochs=1, num_sanity_val_steps=0)
    video = EpisodeVideo(seed=5)
    rendered = video.make_env(module)
    evaluation = env.make(num_envs=1)
    raw = env.make(num_envs=1)
    try:
        # what ControlModule's evaluator does to its env
        evaluation.transform.load_state_dict(module.training_transform_state())
        for transform in evaluation.transform:
            if hasattr(transform, "freeze"):
                transform.freeze()
        for e in (rendered, evaluation, raw):
            e.set_seed(video.seed)
        first = rendered.reset()["observation"]
        expected = evaluation.reset()["observation"][0]
        assert torch.allclose(first, expected, atol=1e-6)
        assert not torch.allclose(first, raw.reset()["observation"][0], atol=1e-2)  # it is normalised
        frames, steps, _ = video.rollout(module, rendered)
        assert steps == 20 and len(frames) == 21  # Pendulum ends at its time limit
    finally:
        for e in (rendered, evaluation, raw):
            e.close()


def _fake_trainer(**kwargs):
    base = {"sanity_checking": False, "state": SimpleNamespace(fn=TrainerFn.FITTING), "is_global_zero": True,
            "loggers": [], "checkpoint_callbacks": [], "global_step": 0}  # fmt: skip
    return SimpleNamespace(**(base | kwargs))


def test_an_env_that_cannot_render_warns_once_and_turns_the_callback_off(tmp_path, monkeypatch, caplog):
    import gymnasium

    def no_renderer(*args, **kwargs):
        raise gymnasium.error.DependencyNotInstalled("pygame is not installed")

    module = _module()
    video = EpisodeVideo()
    monkeypatch.setattr(gymnasium, "make", no_renderer)
    trainer = _fake_trainer(default_root_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="plmods.callbacks.episode_video"):
        video.on_validation_end(trainer, module)
        video.on_validation_end(trainer, module)
    warnings = [r for r in caplog.records if "cannot be rendered" in r.getMessage()]
    assert len(warnings) == 1 and "CartPole-v1" in warnings[0].getMessage()
    assert video.disabled and video.written == [] and video.evaluations == 2
    assert not (tmp_path / "videos").exists()


def test_a_module_without_a_gym_env_gets_no_video(tmp_path, caplog):
    """GRPO has no gymnasium env: one info line, nothing recorded, nothing counted."""
    video = EpisodeVideo()
    module = torch.nn.Linear(1, 1)
    trainer = _fake_trainer(default_root_dir=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="plmods.callbacks.episode_video"):
        video.setup(trainer, module, "fit")
        video.setup(trainer, module, "fit")
        video.on_validation_end(trainer, module)
    assert sum("no episode videos" in r.getMessage() for r in caplog.records) == 1
    assert video.evaluations == 0 and video.written == [] and not (tmp_path / "videos").exists()


def test_every_n_evals_and_rank_zero_only(tmp_path, monkeypatch):
    module = _module()
    video = EpisodeVideo(every_n_evals=2, max_steps=2)
    recorded = []
    monkeypatch.setattr(video, "record", lambda pl_module, path: recorded.append(path) or path)
    for _ in range(5):
        video.on_validation_end(_fake_trainer(default_root_dir=str(tmp_path)), module)
    video.on_validation_end(_fake_trainer(sanity_checking=True), module)  # not counted
    video.on_validation_end(_fake_trainer(state=SimpleNamespace(fn=TrainerFn.VALIDATING)), module)  # not fit
    assert video.evaluations == 5 and len(recorded) == 2  # the 2nd and the 4th
    video.on_validation_end(_fake_trainer(is_global_zero=False), module)  # counted, not recorded
    assert video.evaluations == 6 and len(recorded) == 2


def test_the_video_goes_to_wandb_loggers(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    logged = []
    wandb_logger = WandbLogger(offline=True, save_dir=str(tmp_path))
    monkeypatch.setattr(WandbLogger, "experiment", property(lambda self: SimpleNamespace(log=logged.append)))
    path = EpisodeVideo(max_steps=2).record(_module(), tmp_path / "v.gif")
    trainer = _fake_trainer(loggers=[CSVLogger(str(tmp_path)), wandb_logger], global_step=7)
    EpisodeVideo()._log_video(trainer, path)
    assert len(logged) == 1 and isinstance(logged[0]["val/video"], wandb.Video)
    assert logged[0]["trainer/global_step"] == 7
    # rank > 0: a dummy experiment without .log is skipped
    monkeypatch.setattr(WandbLogger, "experiment", property(lambda self: object()))
    EpisodeVideo()._log_video(trainer, path)
    assert len(logged) == 1


# ---------------------------------------------------------------------------------- resume
def test_a_resumed_run_keeps_both_histories(tmp_path):
    """Segment 1 (1 iteration, checkpointed), then segment 2 from its checkpoint with fresh
    callbacks: the plot has both iterations, the video count goes on. Outputs go to the parent
    of the checkpoint directory."""

    def fit(epochs, ckpt_path=None):
        video, curves = EpisodeVideo(max_steps=5), Curves()
        checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "out" / "checkpoints"), filename="last", save_on_train_epoch_end=True)
        trainer = L.Trainer(max_epochs=epochs, check_val_every_n_epoch=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path / "root"),
                            callbacks=[video, curves, checkpoint])  # fmt: skip
        trainer.fit(_module(), ckpt_path=ckpt_path)
        assert output_dir(trainer) == tmp_path / "out"
        return video, curves

    fit(1)
    video, curves = fit(2, ckpt_path=tmp_path / "out" / "checkpoints" / "last.ckpt")
    assert [row["iteration"] for row in curves.history] == [1.0, 2.0]
    assert curves.path == tmp_path / "out" / "curves.png"
    assert video.evaluations == 2
    assert video.written == [str(tmp_path / "out" / "videos" / f"episode-iter{k}.gif") for k in (1, 2)]
    assert all(Path(p).exists() for p in video.written)


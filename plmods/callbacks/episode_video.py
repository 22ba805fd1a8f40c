"""``EpisodeVideo``: a GIF of one deterministic episode of the current policy, every N evaluations.

Rank 0 builds one gymnasium env with ``render_mode="rgb_array"`` for the module's ``ControlEnv``
(same id, same time limit), wraps it for torchrl and gives it the evaluation env's own transform
stack (``ControlEnv.make``'s transforms, the training observation statistics loaded and frozen
exactly as ``RLModule.evaluate`` does), then runs the module's actor in deterministic mode (as in
evaluation) with torchrl's ``EnvBase.rollout``, rendering one frame after the reset and one after
every step. The frames are written with Pillow to ``<output dir>/videos/<filename>-iter<k>.gif``
and sent to every ``WandbLogger`` as ``val/video``.

Rendering leaves training untouched: it runs under ``isolate_rng`` (torchrl draws random actions
while building a wrapper) and puts the actor back in its previous train/eval mode.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.seed import isolate_rng
from typing_extensions import override

from plmods.envs.control import ControlEnv
from plmods.errors import require
from plmods.protocols import ControlPolicy, Evaluated

__all__ = ["EpisodeVideo", "output_dir"]

log = logging.getLogger(__name__)


def output_dir(trainer: Trainer) -> Path:
    """The run's output directory: the parent of the first ``ModelCheckpoint``'s ``dirpath``
    (``<output_dir>/checkpoints`` in plmods' configs) if there is one, else
    ``trainer.default_root_dir``."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath).parent
    return Path(trainer.default_root_dir)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class EpisodeVideo(Callback):
    """Record one deterministic episode of the module's policy as a GIF every ``every_n_evals``
    evaluations during fit (rank 0).

    Works with modules that keep a ``ControlEnv`` factory as ``env_factory`` and a torchrl
    ``actor`` (``ControlModule``); with any other module (``GRPOModule``: no gymnasium env) it
    does nothing. An env that cannot render ``rgb_array`` frames (or a missing renderer such as
    pygame) logs one warning and turns the callback off.

    Args:
        every_n_evals: record at the N-th, 2N-th, ... evaluation of fit (sanity checks not counted).
        max_steps: the longest episode recorded (steps; the GIF holds one more frame: the reset).
        fps: frames per second of the GIF (frame duration ``1000 / fps`` ms).
        filename: the GIF is ``<filename>-iter<k>.gif`` (k: the module's iteration).
        seed: the recorded episode's env seed (the same start every time, so videos compare).
        dirpath: where GIFs go; None: ``<output dir>/videos``, the output dir being the parent of
            the first ``ModelCheckpoint``'s ``dirpath``, else ``trainer.default_root_dir``.
        overlay: write "step t  return R" in the frame's top-left corner. It also keeps every
            frame distinct: Pillow merges a frame identical to the previous one into it (a longer
            frame), so without the overlay a GIF may hold fewer than ``steps + 1`` frames (same
            playing time).

    State (checkpointed): the number of evaluations seen and the paths written.
    After each recording ``last_steps`` (env steps taken) and ``last_return`` (the episode's
    return, unscaled) describe it.
    """

    def __init__(
        self,
        every_n_evals: int = 1,
        max_steps: int = 500,
        fps: int = 30,
        filename: str = "episode",
        seed: int = 0,
        dirpath: str | None = None,
        overlay: bool = True,
    ) -> None:
        super().__init__()
        require(_is_int(every_n_evals) and every_n_evals >= 1, f"every_n_evals={every_n_evals!r} must be an integer >= 1.")
        require(_is_int(max_steps) and max_steps >= 1, f"max_steps={max_steps!r} must be an integer >= 1.")
        require(
            isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0,
            f"fps={fps!r} must be a number > 0.",
        )
        require(
            isinstance(filename, str) and bool(filename) and "/" not in filename and "\\" not in filename,
            f"filename={filename!r} must be a non-empty file name (no directory).",
        )
        require(_is_int(seed), f"seed={seed!r} must be an integer.")
        require(dirpath is None or (isinstance(dirpath, str) and bool(dirpath)), f"dirpath={dirpath!r} must be null or a path.")
        self.every_n_evals = every_n_evals
        self.max_steps = max_steps
        self.fps = fps
        self.filename = filename
        self.seed = seed
        self.dirpath = dirpath
        self.overlay = bool(overlay)

        self.evaluations = 0
        self.written: list[str] = []
        self.disabled = False
        self.last_steps: int | None = None
        self.last_return: float | None = None
        self._told_unsupported = False

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and not self._supports(pl_module) and not self._told_unsupported:
            self._told_unsupported = True
            if trainer.is_global_zero:
                log.info(
                    "EpisodeVideo: %s has no gymnasium env (no ControlEnv `env_factory`); no episode videos.",
                    type(pl_module).__name__,
                )

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or not self._supports(pl_module):
            return
        self.evaluations += 1  # on every rank: the same count everywhere
        if self.disabled or self.evaluations % self.every_n_evals or not trainer.is_global_zero:
            return
        path = self.record(pl_module, self._target(trainer, pl_module))
        if path is not None:
            self.written.append(str(path))
            self._log_video(trainer, path)

    # ------------------------------------------------------------------ recording
    @staticmethod
    def _supports(pl_module: LightningModule) -> bool:
        return isinstance(pl_module, ControlPolicy) and isinstance(pl_module.env_factory, ControlEnv)

    def _target(self, trainer: Trainer, pl_module: LightningModule) -> Path:
        directory = Path(self.dirpath) if self.dirpath is not None else output_dir(trainer) / "videos"
        iteration = pl_module.iteration if isinstance(pl_module, Evaluated) else trainer.current_epoch
        return directory / f"{self.filename}-iter{int(iteration)}.gif"

    def make_env(self, pl_module: LightningModule) -> Any:
        """One torchrl env over one gymnasium env rendering ``rgb_array`` frames, with the module's
        evaluation transforms (observation statistics frozen), or None when it cannot render
        (after one warning; the callback is then off)."""
        import gymnasium as gym
        from torchrl.envs import GymWrapper, TransformedEnv, VecNormV2
        from torchrl.envs.transforms import VecGymEnvTransform

        factory: ControlEnv = pl_module.env_factory
        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            # headless: pygame (classic control's renderer) draws off-screen either way; without a
            # display SDL would print "error: XDG_RUNTIME_DIR is invalid" into the training log
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        kwargs = {} if factory.max_episode_steps is None else {"max_episode_steps": factory.max_episode_steps}
        try:
            gym_env = gym.make(factory.env_id, render_mode="rgb_array", **kwargs)
            modes = gym_env.metadata.get("render_modes") or []
            if "rgb_array" not in modes:
                gym_env.close()
                raise RuntimeError(f"its render modes are {list(modes)}")
            gym_env.reset(seed=self.seed)
            frame = gym_env.render()
            if getattr(frame, "ndim", 0) != 3:
                gym_env.close()
                raise RuntimeError(f"render() returned {type(frame).__name__}, not an RGB array")
        except Exception as err:  # noqa: BLE001 (any failure to render: warn once, turn off)
            self.disabled = True
            log.warning("EpisodeVideo: %s cannot be rendered as rgb_array (%s); episode videos are off.", factory.env_id, err)
            return None

        # the evaluation env's transforms, built and loaded the way the module's evaluator does
        reference = factory.make(num_envs=1)
        try:
            training_state = pl_module.training_transform_state()
            if training_state is not None and factory.obs_norm:
                reference.transform.load_state_dict(training_state)
                for transform in reference.transform:
                    if isinstance(transform, VecNormV2):
                        transform.freeze()
            env = GymWrapper(gym_env, categorical_action_encoding=True)
            if not isinstance(env, TransformedEnv):
                env = TransformedEnv(env)
            for transform in reference.transform:
                if not isinstance(transform, VecGymEnvTransform):  # the vector env's own
                    env.append_transform(transform.clone())
        finally:
            reference.close()
        return env

    @torch.no_grad()
    def rollout(self, pl_module: LightningModule, env: Any) -> tuple[list[Any], int, float]:
        """Frames (PIL images: the reset, then one per step), steps and return of one deterministic
        episode of the module's actor on ``env`` (at most ``max_steps`` steps)."""
        from PIL import Image, ImageDraw, ImageFont
        from torchrl.envs import ExplorationType, set_exploration_type
        from torchrl.envs.utils import step_mdp

        frames: list[Any] = []
        font = ImageFont.load_default() if self.overlay else None

        def grab(step: int, episode_return: float) -> None:
            image = Image.fromarray(env.render())
            if font is not None:
                ImageDraw.Draw(image).text((8, 6), f"step {step}  return {episode_return:.4g}", fill=(0, 0, 0), font=font)
            # palette images, as the GIF stores them: a third of the memory of RGB frames, and the
            # fast octree quantizer (~4 ms a 600x400 frame; Pillow's default median cut: ~20 ms)
            frames.append(image.quantize(colors=256, method=Image.Quantize.FASTOCTREE))

        env.set_seed(self.seed)
        td = env.reset()
        steps, episode_return = 0, 0.0
        grab(steps, episode_return)
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            while steps < self.max_steps:
                td = env.step(pl_module.actor(td))
                steps += 1
                episode_return = float(td["next", "episode_reward"].sum())
                grab(steps, episode_return)  # a single gymnasium env does not auto-reset: the last state
                if bool(td["next", "done"].any()):
                    break
                td = step_mdp(td)
        return frames, steps, episode_return

    def record(self, pl_module: LightningModule, path: Path) -> Path | None:
        """Render one episode of ``pl_module``'s current policy to the GIF ``path`` (None when the
        env cannot render). The global RNG and the actor's train/eval mode are left as they were."""
        actor = pl_module.actor
        was_training = actor.training
        with isolate_rng():
            env = self.make_env(pl_module)
            if env is None:
                return None
            try:
                actor.eval()
                frames, steps, episode_return = self.rollout(pl_module, env)
            finally:
                actor.train(was_training)
                env.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Pillow merges a frame identical to the one before it into it (longer duration): the
        # overlay's step counter keeps the frames distinct
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=1000 / self.fps, loop=0)
        self.last_steps, self.last_return = steps, episode_return
        log.info("EpisodeVideo: %s (%d steps, return %.4g)", path, steps, episode_return)
        return path

    def _log_video(self, trainer: Trainer, path: Path) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not loggers:
            return
        import wandb  # only with a W&B logger

        for logger in loggers:
            experiment = logger.experiment
            if not hasattr(experiment, "log"):  # rank > 0 gets a dummy experiment
                continue
            experiment.log({"val/video": wandb.Video(str(path), format="gif"), "trainer/global_step": trainer.global_step})

    # ------------------------------------------------------------------ checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"evaluations": self.evaluations, "written": list(self.written)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.evaluations = int(state_dict["evaluations"])
        self.written = [str(p) for p in state_dict["written"]]

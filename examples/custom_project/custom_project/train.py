"""Train on this project's own env (PPO) or with its own reward (GRPO), with a plain ``lightning.Trainer``.

plmods is used as a library: its modules, env factory, models and callbacks are built here with
keyword arguments (the same objects plmods' own ``configs/`` describe with ``_target_``), and the
Trainer, checkpointing, logging and resuming are this project's own.

    python -m custom_project.train --out-dir runs/ppo                      # PPO on GoRight-v0
    python -m custom_project.train --out-dir runs/ppo --resume --max-epochs 40
    python -m custom_project.train --out-dir runs/grpo --algo grpo         # GRPO, addition task

Outputs under ``--out-dir``: ``checkpoints/last.ckpt`` (after every iteration), ``logs/version_<n>/
metrics.csv`` (one row per iteration, one version per invocation) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torchrl.objectives.value import GAE

from custom_project.envs import ENV_ID  # importing custom_project registers GoRight-v0
from custom_project.rewards import shorter_is_better
from plmods.algos import ControlModule
from plmods.algos.ppo_loss import K3ClipPPOLoss
from plmods.callbacks import AdaptiveKL, RefPolicySync, RLProgressBar
from plmods.envs import AdditionTask, ControlEnv
from plmods.models import MLPActorCritic

__all__ = ["ALGOS", "build_grpo", "build_ppo", "cli", "main"]

ALGOS = ("ppo", "grpo")
SOLVED_RETURN = 1.0  # GoRight-v0: the end of the corridor reached in every evaluation episode


def build_ppo(seed: int = 0, total_frames: int = 16_384) -> ControlModule:
    """PPO-clip on ``GoRight-v0``: what ``configs/algo/ppo.yaml`` + ``configs/env/cartpole.yaml``
    build, with this project's env id (``ControlModule.ppo(env, clip_epsilon=..., gamma=..., ...)``
    is the same module in one call)."""
    env = ControlEnv(ENV_ID, num_envs=8, solved_threshold=SOLVED_RETURN)
    return ControlModule(
        env,
        loss=partial(
            K3ClipPPOLoss, clip_epsilon=0.2, clip_value=False, entropy_coeff=0.01, critic_coeff=0.5,
            loss_critic_type="l2", normalize_advantage=True,
        ),  # fmt: skip
        advantage=partial(GAE, gamma=0.98, lmbda=0.95),
        model=MLPActorCritic(hidden_sizes=[32, 32]),
        frames_per_batch=256,
        total_frames=total_frames,
        epochs=4,
        minibatch_size=64,
        lr=3e-3,
        anneal_clip_epsilon=True,
        seed=seed,
        eval_episodes=4,
    )


def build_grpo(seed: int = 0, total_iterations: int = 20):
    """GRPO on plmods' addition task with a tiny LM (the ``debug=fast_lm`` sizes), rewarded for
    the exact sum and, with weight 0.5, for short answers (this project's ``shorter_is_better``)."""
    from plmods.algos import LMModule  # the language stack (transformers) loads only for GRPO
    from plmods.models import TinyCausalLM

    return LMModule.grpo(
        AdditionTask(digits=2),
        TinyCausalLM(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
        rewards={
            "correct": "plmods.rewards.exact_match",
            "short": {"fn": shorter_is_better, "weight": 0.5},
        },
        accuracy_reward="correct",
        prompts_per_batch=4,
        group_size=4,
        epochs=2,
        total_iterations=total_iterations,
        lr=1e-3,
        kl_coef=0.04,
        seed=seed,
        eval_problems=8,
        eval_batch_size=8,
        logged_samples=8,
    )


class _FirstIteration(Callback):
    """Records the module's iteration when training starts (after a checkpoint is restored)."""

    first_iteration: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.first_iteration = pl_module.iteration


def main(
    out_dir: str | Path = "runs/example",
    resume: bool = False,
    algo: str = "ppo",
    max_epochs: int = -1,
    seed: int = 0,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Train ``algo`` ("ppo" or "grpo") for at most ``max_epochs`` iterations in total (one
    Lightning epoch is one plmods iteration; -1: the module's own budget); with ``resume``,
    continue from ``<out_dir>/checkpoints/last.ckpt``. Returns (and writes to
    ``<out_dir>/summary.json``) the module's summary plus the iteration counts."""
    if algo not in ALGOS:
        raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}.")
    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoints" / "last.ckpt"
    if resume and not ckpt_path.is_file():
        raise FileNotFoundError(f"resume=True but {ckpt_path} does not exist: run without resume first.")
    torch.set_num_threads(1)  # small networks: one thread is the fastest on CPU
    L.seed_everything(seed, verbose=False)

    module = build_ppo(seed) if algo == "ppo" else build_grpo(seed)
    first = _FirstIteration()
    callbacks: list[Callback] = [
        ModelCheckpoint(
            dirpath=out_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
            save_on_train_epoch_end=True, enable_version_counter=False,
        ),  # fmt: skip
        first,
    ]
    if algo == "ppo":  # stop once solved: every evaluation episode reaches the end of the corridor
        # (EarlyStopping stops when the value is strictly above its threshold, and 1.0 is the best return)
        callbacks.append(
            EarlyStopping("val/episode_return", mode="max", stopping_threshold=SOLVED_RETURN - 1e-6,
                          patience=10**6, check_on_train_epoch_end=False)  # fmt: skip
        )
    else:  # the reference policy moves halfway to the policy every 4 steps; beta adapts to the KL
        callbacks += [RefPolicySync(sync_every=4, alpha=0.5), AdaptiveKL(target_kl=0.01, rule="ppo")]
    if progress_bar:
        callbacks.append(RLProgressBar())
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        check_val_every_n_epoch=2,
        num_sanity_val_steps=0,
        log_every_n_steps=1,  # one training step per iteration: log every one
        logger=CSVLogger(out_dir, name="logs"),
        callbacks=callbacks,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        default_root_dir=out_dir,
    )
    trainer.fit(module, ckpt_path=ckpt_path if resume else None)
    evaluated = module.val_history[-1]["iteration"] if module.val_history else None
    if evaluated != module.iteration and not trainer.interrupted:
        trainer.validate(module, verbose=False)  # the final policy is always evaluated (as plmods' train.py does)

    summary = {
        "algo": algo,
        "resumed_from": str(ckpt_path) if resume else None,
        "first_iteration": first.first_iteration,
        "iteration": module.iteration,
        "global_step": trainer.global_step,
        **module.summary(),
        "val_history": module.val_history,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m custom_project.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default="runs/example", help="checkpoints, CSV logs and summary.json go here")
    parser.add_argument("--algo", choices=ALGOS, default="ppo")
    parser.add_argument("--resume", action="store_true", help="continue from <out-dir>/checkpoints/last.ckpt")
    parser.add_argument("--max-epochs", type=int, default=-1, help="iterations in total, resumed ones included (-1: the budget)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress-bar", action="store_true")
    return parser.parse_args(argv)


def cli(argv: list[str] | None = None) -> None:
    """``python -m custom_project.train`` (or the ``plmods-example-custom`` script)."""
    args = _parse(argv)
    result = main(args.out_dir, resume=args.resume, algo=args.algo, max_epochs=args.max_epochs, seed=args.seed,
                  progress_bar=not args.no_progress_bar)  # fmt: skip
    print(json.dumps({k: result.get(k) for k in ("algo", "first_iteration", "iteration", "global_step", "solved")}))


if __name__ == "__main__":
    cli()

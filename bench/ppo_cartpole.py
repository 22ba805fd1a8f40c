"""PPO on CartPole-v1: plmods vs a bare torchrl loop vs Stable-Baselines3, time to solve.

What it measures, per seed and for each variant, back to back in one process:

* ``plmods``: ``ControlModule.ppo`` trained by a Lightning ``Trainer`` (validation every ``--eval-every``
  iterations, ``EarlyStopping`` at the threshold).
* ``bare``: the same objects without Lightning: ``ControlEnv.make``, ``MLPActorCritic.build``, torchrl
  ``Collector``, ``GAE``, ``ClipPPOLoss``, ``ReplayBuffer``, Adam(eps=1e-5), the same lr / clip
  annealing, gradient clipping and evaluation protocol. It measures what Lightning costs.
* ``sb3``: Stable-Baselines3 PPO with the rl-zoo CartPole-v1 hyperparameters (8 envs, n_steps 32,
  batch 256, 20 epochs, gamma 0.98, lambda 0.8, lin_1e-3 lr, lin_0.2 clip), evaluated every
  ``--sb3-eval-every`` rollouts the same way (``--eval-episodes`` deterministic episodes, one per env,
  fixed seeds).

"Solved" means the evaluation mean reaches ``--threshold`` (475); a run that reaches
``--total-frames`` (also the annealing horizon) first is "not solved". Reported: frames and wall
seconds to solve (setup and evaluation included), evaluation seconds, training frames/s (frames /
time outside evaluation), a per-phase breakdown (collect / gae / update / eval / other) and, for
reference, SB3's usual training criterion: the first time the mean return of the training episodes
that ended in the last 2,048 frames reaches the threshold. plmods keeps Lightning's DataLoaders off
the global RNG, so plmods and bare follow the same trajectory (same frames, same evaluations) and
the wall-time ratio is Lightning's overhead; ``cpu_s`` is less sensitive to a busy machine.

Run (2 cores, 1 torch thread)::

    .venv/bin/python -m bench.ppo_cartpole --seeds 0,1,2 --variants plmods,bare,sb3
    .venv/bin/python -m bench.ppo_cartpole --num-envs 32 --frames-per-batch 1024 --eval-every 2  # other settings

Results go to ``--out`` (JSON, default ``bench/results/ppo_cartpole.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
import warnings
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

THRESHOLD = 475.0
TRAIN_WINDOW_FRAMES = 2048  # SB3-style criterion: training episodes that ended in the last 2,048 frames


@dataclass
class Settings:
    num_envs: int = 16
    frames_per_batch: int = 512
    minibatch_size: int = 256
    ppo_epochs: int = 10
    lr: float = 1e-3
    gamma: float = 0.98
    lmbda: float = 0.8
    eval_every: int = 4  # policy iterations between evaluations (trainer.check_val_every_n_epoch)
    eval_episodes: int = 10
    total_frames: int = 100_000  # frame cap and annealing horizon
    threshold: float = THRESHOLD
    sb3_eval_every: int = 4  # SB3 rollouts (of 256 frames) between evaluations


@dataclass
class Result:
    variant: str
    seed: int
    solved: bool = False
    frames: int = 0  # frames collected when solved (or at the cap)
    wall_s: float = 0.0  # setup + training + evaluation until solved
    cpu_s: float = 0.0  # process CPU time over the same span (less sensitive to a busy machine)
    eval_s: float = 0.0
    train_fps: float = 0.0  # frames / (wall_s - eval_s)
    evaluations: int = 0
    iterations: int = 0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase
    train_criterion_frames: int | None = None  # SB3-style criterion on training episodes
    train_criterion_wall_s: float | None = None
    eval_history: list[tuple[int, float]] = field(default_factory=list)  # (frames, mean return)


# ---------------------------------------------------------------------------------- shared helpers
class Timers:
    """Wall seconds per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


class TrainWindow:
    """Returns of training episodes by the frame at which they ended; checks SB3's criterion.
    Also the run's clock: ``start`` (wall) and ``cpu_start`` (process CPU)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()
        self.episodes: list[tuple[int, float]] = []
        self.frames: int | None = None
        self.wall_s: float | None = None

    def add(self, end_frame: int, episode_return: float) -> None:
        self.episodes.append((end_frame, episode_return))

    def check(self, frames: int) -> None:
        if self.frames is not None:
            return
        recent = [r for f, r in self.episodes if f > frames - TRAIN_WINDOW_FRAMES]
        if recent and statistics.fmean(recent) >= self.threshold:
            self.frames, self.wall_s = frames, time.perf_counter() - self.start

    def add_batch(self, batch, frames_before: int) -> None:
        """Episodes that ended in a torchrl batch ``[num_envs, T]`` (frame = global step count)."""
        done = batch["next", "done"].squeeze(-1)
        if done.any():
            num_envs = done.shape[0]
            env_idx, t = done.nonzero(as_tuple=True)
            returns = batch["next", "episode_reward"].squeeze(-1)[env_idx, t]
            for step, ret in zip(t.tolist(), returns.tolist(), strict=True):
                self.add(frames_before + (step + 1) * num_envs, ret)
        self.check(frames_before + batch.numel())


def seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stop_clock(result: Result, window: TrainWindow) -> None:
    result.wall_s = time.perf_counter() - window.start
    result.cpu_s = time.process_time() - window.cpu_start


def finish(result: Result, timers: Timers, window: TrainWindow) -> Result:
    result.phases = {k: round(v, 4) for k, v in timers.seconds.items()}
    result.phases["other"] = round(result.wall_s - sum(timers.seconds.values()), 4)
    result.train_fps = result.frames / max(result.wall_s - result.eval_s, 1e-9)
    result.train_criterion_frames, result.train_criterion_wall_s = window.frames, window.wall_s
    return result


# ---------------------------------------------------------------------------------- (a) plmods
def run_plmods(s: Settings, seed: int) -> Result:
    from lightning import Callback, Trainer
    from lightning.pytorch.callbacks import EarlyStopping

    from plmods.algos import ControlModule
    from plmods.envs.control import ControlEnv

    timers = Timers()
    window = TrainWindow(s.threshold)

    class TimedPPO(ControlModule):
        """ControlModule (PPO) with phase timers; behaviour unchanged."""

        def setup(self, stage):
            super().setup(stage)
            collect = self.rollout.collect

            def timed_collect():
                frames_before = self.frames
                with timers("collect"):
                    batch, stepped = collect()
                window.add_batch(batch, frames_before)
                return batch, stepped

            self.rollout.collect = timed_collect

        def estimate_advantage(self, batch):
            with timers("gae"):
                return super().estimate_advantage(batch)

        def training_step(self, batch, batch_idx):
            with timers("train_step"):  # update + per-iteration logging
                return super().training_step(batch, batch_idx)

        def update(self, batch):
            with timers("update"):
                return super().update(batch)

        def evaluate(self):
            with timers("eval"):
                return super().evaluate()

    class ValidationTimer(Callback):
        """Time of Lightning's whole validation loop (evaluation plus its Lightning overhead)."""

        def __init__(self) -> None:
            self.seconds = 0.0
            self.count = 0

        def on_validation_start(self, trainer, pl_module) -> None:
            self._t = time.perf_counter()

        def on_validation_end(self, trainer, pl_module) -> None:
            self.seconds += time.perf_counter() - self._t
            self.count += 1

    seed_all(seed)
    module = TimedPPO.ppo(
        ControlEnv("CartPole-v1", num_envs=s.num_envs),
        frames_per_batch=s.frames_per_batch,
        minibatch_size=s.minibatch_size,
        epochs=s.ppo_epochs,
        lr=s.lr,
        gamma=s.gamma,
        lmbda=s.lmbda,
        total_frames=s.total_frames,
        seed=seed,
        eval_episodes=s.eval_episodes,
    )
    val_timer = ValidationTimer()
    trainer = Trainer(
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=s.eval_every,
        callbacks=[
            EarlyStopping("val/episode_return", mode="max", stopping_threshold=s.threshold, patience=10**6),
            val_timer,
        ],
    )
    trainer.fit(module)

    history = [(row["frames"], row["val/episode_return"]) for row in module.val_history]
    solved_at = next((f for f, r in history if r >= s.threshold), None)
    result = Result(
        "plmods",
        seed,
        solved=solved_at is not None,
        frames=solved_at if solved_at is not None else module.frames,
        eval_s=val_timer.seconds,
        evaluations=val_timer.count,
        iterations=module.iteration,
        eval_history=history,
    )
    stop_clock(result, window)
    timers.seconds["log"] = timers.seconds.pop("train_step") - timers.seconds["update"]
    timers.seconds["lightning_val_loop"] = val_timer.seconds - timers.seconds["eval"]
    return finish(result, timers, window)


# ---------------------------------------------------------------------------------- (b) bare torchrl
def run_bare(s: Settings, seed: int) -> Result:
    from torchrl.collectors import Collector
    from torchrl.data import LazyTensorStorage, ReplayBuffer, SamplerWithoutReplacement
    from torchrl.envs import ExplorationType
    from torchrl.objectives import ClipPPOLoss
    from torchrl.objectives.value import GAE

    from plmods.algos.base import EVAL_SEED_OFFSET
    from plmods.envs.control import ControlEnv
    from plmods.models.control import MLPActorCritic
    from plmods.rollout.evaluation import first_episode_returns

    clip_epsilon, max_grad_norm = 0.2, 0.5  # ControlModule.ppo defaults
    timers = Timers()
    window = TrainWindow(s.threshold)
    seed_all(seed)

    factory = ControlEnv("CartPole-v1", num_envs=s.num_envs)
    actor, critic = MLPActorCritic().build(factory.make(num_envs=1))  # seeded, as ControlModule(seed=...)
    seed_all(seed)  # ControlModule seeds the training RNG again in setup("fit")
    loss_module = ClipPPOLoss(
        actor,
        critic,
        clip_epsilon=clip_epsilon,
        clip_value=False,
        entropy_bonus=False,
        entropy_coeff=0.0,
        critic_coeff=0.5,
        loss_critic_type="l2",
        normalize_advantage=True,
    )
    gae = GAE(gamma=s.gamma, lmbda=s.lmbda, value_network=critic)
    optimizer = torch.optim.Adam(loss_module.parameters(), lr=s.lr, eps=1e-5)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    collector = Collector(
        factory.make(seed=seed),  # seeded before the collector resets it
        actor,
        frames_per_batch=s.frames_per_batch,
        total_frames=-1,
        exploration_type=ExplorationType.RANDOM,
        auto_register_policy_transforms=False,
    )

    def evaluate() -> torch.Tensor:  # ControlModule.evaluate, without obs_norm
        env = factory.make(num_envs=s.eval_episodes)
        try:
            return first_episode_returns(env, actor, factory.episode_limit, seed=seed + EVAL_SEED_OFFSET)
        finally:
            env.close()

    result = Result("bare", seed)
    frames, iteration = 0, 0
    collector_iter = iter(collector)
    while True:
        with timers("collect"):
            batch = next(collector_iter)
        window.add_batch(batch, frames)
        frames += batch.numel()
        with timers("gae"):
            # iteration i of N runs 1 - i / N (ControlModule's LambdaLR and clip annealing)
            frac = max(0.0, 1.0 - iteration / math.ceil(s.total_frames / s.frames_per_batch))
            iteration += 1
            for group in optimizer.param_groups:
                group["lr"] = s.lr * frac
            loss_module.clip_epsilon.fill_(clip_epsilon * frac)
            with torch.no_grad():
                gae(batch)
        with timers("update"):
            buffer = ReplayBuffer(  # a fresh buffer per iteration, as ControlModule.minibatches
                storage=LazyTensorStorage(s.frames_per_batch),
                sampler=SamplerWithoutReplacement(),
                batch_size=s.minibatch_size,
            )
            buffer.extend(batch.reshape(-1))
            for _ in range(s.ppo_epochs):
                for minibatch in buffer:
                    out = loss_module(minibatch)
                    loss = sum(v for k, v in out.items() if k.startswith("loss_"))
                    optimizer.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                    optimizer.step()
        if iteration % s.eval_every == 0:
            with timers("eval"):
                mean = float(evaluate().mean())
            result.evaluations += 1
            result.eval_history.append((frames, mean))
            if mean >= s.threshold:
                result.solved = True
                break
        if frames >= s.total_frames:
            break
    stop_clock(result, window)
    collector.shutdown()
    result.frames, result.iterations = frames, iteration
    result.eval_s = timers.seconds["eval"]
    return finish(result, timers, window)


# ---------------------------------------------------------------------------------- (c) SB3
SB3_ZOO = {  # rl-baselines3-zoo hyperparams/ppo.yml, CartPole-v1
    "n_envs": 8,
    "n_steps": 32,
    "batch_size": 256,
    "gae_lambda": 0.8,
    "gamma": 0.98,
    "n_epochs": 20,
    "ent_coef": 0.0,
    "learning_rate": 1e-3,
    "clip_range": 0.2,
}


def run_sb3(s: Settings, seed: int) -> Result:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import DummyVecEnv

    from plmods.algos.base import EVAL_SEED_OFFSET

    z = SB3_ZOO
    timers = Timers()
    window = TrainWindow(s.threshold)
    result = Result("sb3", seed)
    seed_all(seed)

    def linear(initial: float):
        return lambda progress_remaining: progress_remaining * initial

    env = make_vec_env("CartPole-v1", n_envs=z["n_envs"], seed=seed, vec_env_cls=DummyVecEnv)
    eval_env = make_vec_env("CartPole-v1", n_envs=s.eval_episodes, vec_env_cls=DummyVecEnv)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=z["n_steps"],
        batch_size=z["batch_size"],
        gae_lambda=z["gae_lambda"],
        gamma=z["gamma"],
        n_epochs=z["n_epochs"],
        ent_coef=z["ent_coef"],
        learning_rate=linear(z["learning_rate"]),
        clip_range=linear(z["clip_range"]),
        seed=seed,
        device="cpu",
        verbose=0,
    )

    class Solve(BaseCallback):
        """Evaluates after every ``sb3_eval_every``-th update (at the next rollout's start) and stops
        once solved; records training episodes for the SB3-style criterion."""

        def __init__(self) -> None:
            super().__init__()
            self.rollouts = 0
            self.stop = False

        def _on_rollout_start(self) -> None:
            if self.rollouts and self.rollouts % s.sb3_eval_every == 0:
                with timers("eval"):
                    eval_env.seed(seed + EVAL_SEED_OFFSET)
                    returns, _ = evaluate_policy(
                        self.model,
                        eval_env,
                        n_eval_episodes=s.eval_episodes,
                        deterministic=True,
                        return_episode_rewards=True,
                    )
                mean = statistics.fmean(returns)
                result.evaluations += 1
                result.eval_history.append((self.num_timesteps, mean))
                if mean >= s.threshold:
                    result.solved, result.frames = True, self.num_timesteps
                    stop_clock(result, window)
                    self.stop = True

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    window.add(self.num_timesteps, info["episode"]["r"])
            return not self.stop

        def _on_rollout_end(self) -> None:
            self.rollouts += 1
            window.check(self.num_timesteps)

    callback = Solve()
    model.learn(total_timesteps=s.total_frames, callback=callback)
    if not result.solved:
        result.frames = model.num_timesteps
        stop_clock(result, window)
    result.iterations = callback.rollouts
    result.eval_s = timers.seconds["eval"]
    env.close()
    eval_env.close()
    return finish(result, timers, window)


VARIANTS = {"plmods": run_plmods, "bare": run_bare, "sb3": run_sb3}


# ---------------------------------------------------------------------------------- report
def median(results: list[Result], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in results)


def summarize(results: list[Result], variants: list[str]) -> dict:
    summary: dict = {}
    for v in variants:
        rs = [r for r in results if r.variant == v]
        if not rs:
            continue
        summary[v] = {
            "solved": sum(r.solved for r in rs),
            "runs": len(rs),
            **{k: median(rs, k) for k in ("frames", "wall_s", "cpu_s", "eval_s", "train_fps")},
            "phases": {k: statistics.median(r.phases.get(k, 0.0) for r in rs) for k in rs[0].phases},
        }
    ratios = {}
    if "plmods" in summary and "bare" in summary:
        p, b = summary["plmods"], summary["bare"]
        ratios["plmods/bare wall_s"] = p["wall_s"] / b["wall_s"]
        ratios["plmods/bare train_fps"] = p["train_fps"] / b["train_fps"]
        ratios["plmods/bare cpu_s"] = p["cpu_s"] / b["cpu_s"]
        pairs = [
            (r, q)
            for r in results
            for q in results
            if r.variant == "plmods" and q.variant == "bare" and r.seed == q.seed
        ]
        ratios["plmods/bare wall_s per seed (median)"] = statistics.median(
            r.wall_s / q.wall_s for r, q in pairs
        )
        ratios["plmods/bare train_fps per seed (median)"] = statistics.median(
            r.train_fps / q.train_fps for r, q in pairs
        )
    if "plmods" in summary and "sb3" in summary:
        ratios["plmods/sb3 wall_s"] = summary["plmods"]["wall_s"] / summary["sb3"]["wall_s"]
        ratios["plmods/sb3 cpu_s"] = summary["plmods"]["cpu_s"] / summary["sb3"]["cpu_s"]
    summary["ratios"] = ratios
    return summary


def print_row(label: str, frames, wall, cpu, eval_s, fps, extra: str = "") -> None:
    print(f"{label:<8}{frames:>8.0f}{wall:>8.1f}{cpu:>8.1f}{eval_s:>8.1f}{fps:>8.0f}  {extra}")


def report(results: list[Result], summary: dict) -> None:
    header = f"{'variant':<8}{'frames':>8}{'wall s':>8}{'cpu s':>8}{'eval s':>8}{'fps':>8}  notes"
    for seed in sorted({r.seed for r in results}):
        print(f"\nseed {seed}\n{header}")
        for r in (r for r in results if r.seed == seed):
            crit = (
                f"train-criterion {r.train_criterion_frames} fr / {r.train_criterion_wall_s:.1f} s"
                if r.train_criterion_frames is not None
                else "train-criterion not reached"
            )
            phases = " ".join(f"{k}={v:.1f}" for k, v in r.phases.items())
            note = ("" if r.solved else "NOT SOLVED; ") + f"{r.evaluations} evals; {crit}; {phases}"
            print_row(r.variant, r.frames, r.wall_s, r.cpu_s, r.eval_s, r.train_fps, note)
    print(f"\nmedians\n{header}")
    for v, m in summary.items():
        if v != "ratios":
            print_row(
                v,
                m["frames"],
                m["wall_s"],
                m["cpu_s"],
                m["eval_s"],
                m["train_fps"],
                f"solved {m['solved']}/{m['runs']}",
            )
    for k, v in summary["ratios"].items():
        print(f"{k}: {v:.3f}")


def parse_args() -> argparse.Namespace:
    d = Settings()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument(
        "--variants", default="plmods,bare,sb3", help=f"comma-separated subset of {list(VARIANTS)}"
    )
    p.add_argument("--out", default="bench/results/ppo_cartpole.json", help="JSON results path")
    for name, default in asdict(d).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    settings = Settings(**{k: getattr(args, k) for k in asdict(Settings())})
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    if "sb3" in variants:
        try:
            import stable_baselines3  # noqa: F401
        except ImportError:
            print("stable_baselines3 is not importable: skipping sb3")
            variants.remove("sb3")

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    print(f"settings: {settings}")

    results: list[Result] = []
    for seed in [int(x) for x in args.seeds.split(",")]:
        for v in variants:
            results.append(VARIANTS[v](settings, seed))
            r = results[-1]
            print(
                f"  seed {seed} {v:<7} solved={r.solved} frames={r.frames} wall={r.wall_s:.1f}s "
                f"eval={r.eval_s:.1f}s fps={r.train_fps:.0f}",
                flush=True,
            )
    summary = summarize(results, variants)
    report(results, summary)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"settings": asdict(settings), "summary": summary, "runs": [asdict(r) for r in results]}, indent=1
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

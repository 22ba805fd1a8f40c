"""The evaluator of the language algorithms: held-out accuracy of sampled answers.

A fixed set of held-out problems (drawn with the evaluation seed and excluded from training draws)
gets one sampled answer each, at the training temperature, with a fixed seed: the same draws at
every evaluation (numbers comparable across iterations) and the training RNG left untouched.
``val/accuracy`` is the fraction whose accuracy reward term is 1; ``val/reward_mean`` the mean total
reward. The first few completions go to W&B as a table and to ``summary.json``.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.loggers import Logger, WandbLogger

from plmods.envs.text import TextTask
from plmods.errors import ConfigError
from plmods.rollout.group_rollout import GroupRollout

__all__ = ["HeldoutAccuracy", "before_and_after", "log_samples"]


class HeldoutAccuracy:
    """Args:
    task: the task (held-out problems are excluded from its training draws).
    accuracy_reward: the reward term whose value 1 means "correct".
    eval_problems: held-out problems.
    eval_batch_size: prompts generated together.
    logged_samples: completions kept per evaluation (W&B table, summary.json).
    seed: the evaluation seed (problems and sampling).
    """

    metrics = ("val/accuracy", "val/reward_mean")

    def __init__(
        self, task: TextTask, accuracy_reward: str, *, eval_problems: int, eval_batch_size: int, logged_samples: int, seed: int
    ) -> None:
        try:
            self.problems = task.heldout(eval_problems, seed=seed)
        except ValueError as err:  # the task has fewer distinct problems than asked
            raise ConfigError(f"eval_problems={eval_problems} is more than the task can hold out ({err}).") from None
        task.exclude(self.problems)
        self.accuracy_reward = accuracy_reward
        self.eval_batch_size = eval_batch_size
        self.logged_samples = logged_samples
        self.seed = seed

    @torch.no_grad()
    def evaluate(self, rollout: GroupRollout, policy: torch.nn.Module) -> dict[str, Any]:
        """``val/*`` metrics and ``samples`` of ``policy`` on the held-out problems."""
        completions: list[str] = []
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            for first in range(0, len(self.problems), self.eval_batch_size):
                chunk = self.problems[first : first + self.eval_batch_size]
                completions += rollout.sampler.decode(rollout.generate(policy, [p["prompt"] for p in chunk]))
        rewards, terms = rollout.score(self.problems, completions)
        correct = terms[self.accuracy_reward] >= 1.0
        samples = [
            {"prompt": p["prompt"], "completion": c, "answer": p.get("answer"), "reward": float(r)}
            for p, c, r in list(zip(self.problems, completions, rewards, strict=True))[: self.logged_samples]
        ]
        return {
            "val/reward_mean": float(rewards.mean()),
            "val/accuracy": float(correct.float().mean()),
            **{f"val/reward/{name}": float(value.mean()) for name, value in terms.items()},
            "samples": samples,
        }


def before_and_after(history: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    """``{before, after}`` of a validation metric: the iteration-0 row and the last row."""
    before = history[0] if history and history[0]["iteration"] == 0 else None
    after = history[-1] if history else None
    return {"before": None if before is None else before.get(key), "after": None if after is None else after.get(key)}


def log_samples(loggers: list[Logger], iteration: int, samples: list[dict[str, Any]]) -> None:
    """An evaluation's samples as the W&B table ``val/samples`` (one row per completion)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_table(
                key="val/samples",
                columns=["iteration", "prompt", "completion", "answer", "reward"],
                data=[[iteration, s["prompt"], s["completion"], s["answer"], s["reward"]] for s in samples],
            )

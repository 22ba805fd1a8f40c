"""GRPO throughput: plmods against TRL's ``GRPOTrainer`` on the same model, task and batch.

Both start from the same SFT-warmed tiny Llama (``TinyCausalLM`` + ``SFTWarmup``, cached), train
2-digit addition with B=16 prompts x G=8 samples, mu=2 optimizer steps per generation round over the
whole round, plain sampling at T=1, constant lr, 1 torch thread. Each variant runs in its own
subprocess (peak RSS is per process), back to back, ``--repeats`` times; printed: medians of
generation rounds/s, optimizer steps/s, generated tokens/s, peak RSS and held-out accuracy (one
sampled answer for each of 200 problems) before and after, the mean training reward of the first
10 and last 20 rounds (the reward curve), and the plmods/TRL ratios.

    .venv/bin/python -m bench.grpo --iterations 60 --repeats 3          # needs the bench extra (trl)
    .venv/bin/python -m bench.grpo --variants plmods,plmods_keep        # without TRL

Variants: ``plmods`` (defaults: all-equal-reward groups skipped in the update), ``plmods_keep``
(``drop_uniform_groups=false``: every completion in the update, as TRL does), ``trl``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def sft_model_dir(seed: int = 0) -> str:
    """The SFT-warmed tiny model both variants start from (the grpo_addition preset's warm-up)."""
    from plmods.algos.grpo import EVAL_SEED_OFFSET
    from plmods.callbacks import SFTWarmup
    from plmods.envs.text import AdditionTask
    from plmods.models.lm import TinyCausalLM
    from plmods.utils import configure_torch

    configure_torch(1)
    task = AdditionTask()
    task.exclude(task.heldout(200, seed=seed + EVAL_SEED_OFFSET))
    sft = SFTWarmup(steps=600, batch_size=64, lr=1e-3, seed=seed, cache_dir="~/.cache/plmods/sft")
    return sft.warm_up(TinyCausalLM(), task, seed).path


def run_plmods(
    model_dir: str, iterations: int, lr: float, seed: int, drop_uniform_groups: bool = True, beta: float = 0.0
) -> dict:
    """LMModule.grpo under a Lightning Trainer; timings from the training iterations only."""
    import lightning as L

    from plmods.algos.lm import LMModule
    from plmods.envs.text import AdditionTask
    from plmods.models.lm import TinyCausalLM
    from plmods.utils import configure_torch, quiet_known_warnings

    configure_torch(1)
    quiet_known_warnings()
    L.seed_everything(seed, verbose=False)
    module = LMModule.grpo(
        AdditionTask(), TinyCausalLM(path=model_dir), prompts_per_batch=16, group_size=8,
        epochs=2, max_new_tokens=8, total_iterations=iterations, lr=lr, seed=seed,
        drop_uniform_groups=drop_uniform_groups, kl_coef=beta,
    )  # fmt: skip

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.seconds, self.tokens, self.rewards = 0.0, 0.0, []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.seconds += time.perf_counter() - self._start
            metrics = pl_module._iteration_metrics
            self.tokens += float(metrics["completion_length"]) * 16 * 8
            self.rewards.append(round(float(metrics["reward"]), 4))

    timer = Timer()
    trainer = L.Trainer(
        max_epochs=iterations, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(module)  # evaluates "before" in on_train_start (not in the timer)
    after = module.evaluate()
    return {
        "generation_batches_per_s": iterations / timer.seconds,
        "optimizer_steps_per_s": trainer.global_step / timer.seconds,
        "generated_tokens_per_s": timer.tokens / timer.seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "wall_s": timer.seconds,
        "optimizer_steps": trainer.global_step,
        "accuracy_before": module.val_history[0]["val/accuracy"],
        "accuracy_after": after["val/accuracy"],
        "train_rewards": timer.rewards,
    }


def worker(variant: str, model_dir: str, iterations: int, lr: float, seed: int, beta: float) -> dict:
    if variant == "trl":
        from bench.grpo_trl import run_trl

        result = run_trl(model_dir, iterations=iterations, lr=lr, seed=seed, beta=beta)
        result.setdefault("accuracy_before", result.get("heldout_accuracy_before"))
        result.setdefault("accuracy_after", result.get("heldout_accuracy_after"))
        result["train_rewards"] = result["train_reward_per_round"]
    else:
        result = run_plmods(model_dir, iterations, lr, seed, drop_uniform_groups=variant == "plmods", beta=beta)
    rewards = result["train_rewards"]  # the reward curve: same prompts in the same order in every variant
    result["train_reward_first10"] = statistics.mean(rewards[:10])
    result["train_reward_last20"] = statistics.mean(rewards[-20:])
    return result


def _median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="plmods,plmods_keep,trl")
    parser.add_argument("--iterations", type=int, default=60, help="generation rounds per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (interleaved)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--beta", type=float, default=0.0, help="KL coefficient (> 0: a reference model)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model_dir, args.iterations, args.lr, args.seed, args.beta)))
        return

    model_dir = sft_model_dir(args.seed)
    variants = args.variants.split(",")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        for variant in variants:  # interleaved: machine noise hits every variant alike
            cmd = [sys.executable, "-m", "bench.grpo", "--worker", variant, "--model-dir", model_dir,
                   "--iterations", str(args.iterations), "--lr", str(args.lr), "--seed", str(args.seed),
                   "--beta", str(args.beta)]  # fmt: skip
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{variant} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            results[variant].append(row)
            print(f"[{repeat}] {variant}: {row['generation_batches_per_s']:.2f} rounds/s, "
                  f"acc {row['accuracy_before']} -> {row['accuracy_after']}", flush=True)  # fmt: skip

    keys = ("generation_batches_per_s", "optimizer_steps_per_s", "generated_tokens_per_s", "peak_rss_gb",
            "accuracy_before", "accuracy_after", "train_reward_first10", "train_reward_last20")  # fmt: skip
    table = {v: {k: _median(rows, k) for k in keys} | {"runs": len(rows)} for v, rows in results.items()}
    print(f"\nB=16 x G=8, mu=2, {args.iterations} iterations, lr {args.lr}, beta {args.beta}, medians of {args.repeats} runs")
    short = ("rounds/s", "opt steps/s", "gen tokens/s", "peak RSS GB", "acc before", "acc after",
             "reward 1-10", "reward last 20")  # fmt: skip
    print(f"{'variant':<13}" + "".join(f"{k:>15}" for k in short))
    for variant, row in table.items():
        print(f"{variant:<13}" + "".join(f"{row[k]:>15.3f}" if row[k] is not None else f"{'-':>15}" for k in keys))
    if "trl" in table and table["trl"]["generation_batches_per_s"]:
        for variant in (v for v in variants if v != "trl"):
            ratio = table[variant]["generation_batches_per_s"] / table["trl"]["generation_batches_per_s"]
            print(f"{variant}/trl generation rounds per second: {ratio:.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"grpo_beta{args.beta:g}.json"
    out.write_text(json.dumps({"args": vars(args), "medians": table, "runs": results}, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()

"""Scaling on one machine: one process vs 2 DDP / FSDP processes vs env workers vs a Ray collector.

Every variant is a real ``python train.py`` run (its own process tree, back to back, ``--repeats``
times in turn); figures come from its ``summary.json``:

* **PPO CartPole-v1** (the default preset, trained until solved): frames/s over the run and wall
  seconds to solve. ``ddp_sim`` halves envs and frames per rank, so the global batch (and the
  algorithm) is the one of one process; ``workers`` steps the envs in 2 torchrl worker processes
  (``env.workers=2``); ``ray`` collects through torchrl's Ray collector on a local Ray cluster.
* **GRPO on a tiny LM** (a compute-bound size: 4 layers of width 384, 7M parameters, 8 prompts x 8
  completions of up to 48 tokens, no warm-up): rounds/s and completions/s. ``weak``: every rank samples the one-process round
  (twice the data per step); ``strong``: every rank samples half of it (the same global round).

Run (2 cores; each process 1 torch thread)::

    .venv/bin/python -m bench.scaling --repeats 3
    .venv/bin/python -m bench.scaling --only grpo --repeats 3

Results go to ``--out`` (JSON, default ``bench/results/scaling.json``); medians and ratios to one
process are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PPO = ("logger=none",)
PPO_VARIANTS = {
    "1 process": (),
    "ddp_sim (2 x half batch)": ("trainer=ddp_sim", "env.num_envs=8", "algo.frames_per_batch=256", "algo.minibatch_size=128"),
    "1 process, 2 env workers": ("env.workers=2",),
    "1 process, Ray collector (2)": ("env.workers=2", "env.backend=ray"),
}

GRPO = (
    "experiment=grpo_addition", "logger=none", "model.hidden_size=384", "model.num_layers=4", "model.num_heads=6",
    "model.intermediate_size=1024", "algo.max_new_tokens=48", "algo.group_size=8", "algo.total_iterations=6",
    "trainer.check_val_every_n_epoch=100", "algo.eval_problems=8",
    # no warm-up: completions run to the token limit (the warmed-up tiny LM answers in 3 tokens,
    # which measures gloo's gradient all-reduce, not sampling); a length reward keeps groups
    # informative, so one process skips no rows that DDP has to run
    "callbacks.sft_warmup.steps=0", "+algo.rewards.length=tests.rewards_for_tests.length_reward",
)  # fmt: skip
GRPO_VARIANTS = {
    "1 process (B=8)": ("algo.prompts_per_batch=8",),
    "ddp_sim weak (B=8 per rank)": ("trainer=ddp_sim", "algo.prompts_per_batch=8"),
    "ddp_sim strong (B=4 per rank)": ("trainer=ddp_sim", "algo.prompts_per_batch=4"),
    "fsdp_sim strong (B=4 per rank)": ("trainer=fsdp_sim", "algo.prompts_per_batch=4"),
}


def _run(overrides: tuple[str, ...], workdir: Path, timeout: float) -> dict:
    run_dir = workdir / f"run{time.monotonic_ns()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run_dir}"],
        cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip
    if proc.returncode != 0:
        return {"error": (proc.stdout + proc.stderr)[-1500:]}
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["process_wall_s"] = time.perf_counter() - start
    return summary


def _ppo_figures(s: dict) -> dict:
    solved = s.get("solved_at") or {}
    return {
        "frames_per_s": s["frames"] / s["wall_s"],
        "solve_s": solved.get("wall_s"),
        "solve_frames": solved.get("frames"),
        "process_s": s["process_wall_s"],
    }


def _grpo_figures(s: dict) -> dict:
    cfg = s["config"]
    ranks = cfg["trainer"].get("devices", 1) if "strategy" in cfg["trainer"] else 1
    completions = cfg["algo"]["prompts_per_batch"] * cfg["algo"]["group_size"] * ranks
    return {
        "rounds_per_s": s["iterations"] / s["wall_s"],
        "completions_per_s": s["iterations"] * completions / s["wall_s"],
        "process_s": s["process_wall_s"],
    }


def _median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def _table(name: str, results: dict[str, list[dict]], keys: tuple[str, ...]) -> str:
    base = {k: _median(results[next(iter(results))], k) for k in keys}
    lines = [f"\n{name} (medians; ratio to the first row)", "variant".ljust(34) + "".join(k.rjust(26) for k in keys)]
    for variant, rows in results.items():
        cells = []
        for k in keys:
            m = _median(rows, k)
            errors = sum("error" in r for r in rows)
            if m is None:
                cells.append(("failed" if errors else "-").rjust(26))
                continue
            ratio = f" ({m / base[k]:.2f}x)" if base[k] else ""
            cells.append(f"{m:.2f}{ratio}".rjust(26))
        lines.append(variant.ljust(34) + "".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("ppo", "grpo"), default=None)
    parser.add_argument("--variants", default=None, help="comma-separated substrings of variant names")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scaling.json"))
    args = parser.parse_args()

    suites = {
        "ppo": (PPO, PPO_VARIANTS, _ppo_figures, ("frames_per_s", "solve_s", "solve_frames")),
        "grpo": (GRPO, GRPO_VARIANTS, _grpo_figures, ("rounds_per_s", "completions_per_s")),
    }
    out: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for suite, (common, variants, figures, keys) in suites.items():
            if args.only and suite != args.only:
                continue
            chosen = {k: v for k, v in variants.items() if not args.variants or any(s in k for s in args.variants.split(","))}
            extra = (f"callbacks.sft_warmup.cache_dir={workdir / 'sft'}",) if suite == "grpo" else ()
            results: dict[str, list[dict]] = {name: [] for name in chosen}
            for repeat in range(args.repeats):
                for name, overrides in chosen.items():  # in turn: machine noise spreads over variants
                    summary = _run((*common, *extra, *overrides), workdir, args.timeout)
                    row = {"error": summary["error"]} if "error" in summary else figures(summary)
                    results[name].append(row)
                    print(f"[{suite} {repeat}] {name}: {row}", flush=True)
            out[suite] = results
            print(_table(suite, results, keys), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

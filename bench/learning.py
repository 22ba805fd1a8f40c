"""Learning results of the experiment presets: median over seeds, through the real ``train.py``.

For each preset and seed it runs ``python train.py experiment=<preset> seed=<s> logger=csv`` (one
run at a time, 1 torch thread) and reads the run's ``summary.json``. Printed per preset: how many
seeds solved, median frames and wall seconds to the first evaluation at or above the env's
threshold (runs that never got there are left out of those two medians), and the median final
and best evaluation return (10 deterministic episodes).

    .venv/bin/python bench/learning.py --experiments ppo_cartpole,reinforce_cartpole --seeds 0,1,2
    .venv/bin/python bench/learning.py --experiments grpo_addition --seeds 0,1,2

Language presets (GRPO) report the held-out accuracy and mean reward before (after the SFT
warm-up) and after training instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(experiment: str, seed: int, extra: list[str], out_dir: Path) -> dict:
    run_dir = out_dir / f"{experiment}_s{seed}"
    cmd = [sys.executable, str(ROOT / "train.py"), f"experiment={experiment}", f"seed={seed}", "logger=csv",
           f"hydra.run.dir={run_dir}", *extra]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((run_dir / "summary.json").read_text())


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize_lm(experiment: str, runs: list[dict]) -> dict:
    """Language presets: held-out accuracy of sampled answers before (after the SFT warm-up) and after."""
    return {
        "experiment": experiment,
        "env": runs[0]["env"],
        "algo": runs[0]["algo"],
        "seeds": [r["seed"] for r in runs],
        "median_accuracy_before": _median([r["val/accuracy"]["before"] for r in runs]),
        "median_accuracy_after": _median([r["val/accuracy"]["after"] for r in runs]),
        "median_reward_before": _median([r["val/reward_mean"]["before"] for r in runs]),
        "median_reward_after": _median([r["val/reward_mean"]["after"] for r in runs]),
        "median_wall_s": _median([r["wall_s"] for r in runs]),
        "median_sft_s": _median([r["sft"].get("seconds") for r in runs if r["sft"] and r["sft"].get("seconds")]),
        "per_seed": [
            {"seed": r["seed"], "iterations": r["iterations"], "wall_s": r["wall_s"], "sft": r["sft"]}
            | {"accuracy": r["val/accuracy"], "reward_mean": r["val/reward_mean"]}
            for r in runs
        ],
    }


def summarize(experiment: str, runs: list[dict]) -> dict:
    if "val/accuracy" in runs[0]:
        return summarize_lm(experiment, runs)
    solved = [r for r in runs if r["solved"]]
    return {
        "experiment": experiment,
        "env": runs[0]["env"],
        "algo": runs[0]["algo"],
        "seeds": [r["seed"] for r in runs],
        "solved": f"{len(solved)}/{len(runs)}",
        "threshold": runs[0]["solved_threshold"],
        "median_frames_to_solve": _median([r["solved_at"]["frames"] for r in solved]),
        "median_wall_s_to_solve": _median([r["solved_at"]["wall_s"] for r in solved]),
        "median_final_return": _median([r["val/episode_return"]["final"] for r in runs]),
        "median_best_return": _median([r["val/episode_return"]["best"] for r in runs]),
        "median_frames": _median([r["frames"] for r in runs]),
        "median_wall_s": _median([r["wall_s"] for r in runs]),
        "per_seed": [
            {k: r[k] for k in ("seed", "frames", "wall_s", "solved", "solved_at")}
            | {"final": r["val/episode_return"]["final"], "best": r["val/episode_return"]["best"]}
            for r in runs
        ],
    }


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", default="ppo_cartpole,ppo_kl_cartpole,reinforce_cartpole")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="bench/results/learning.json")
    parser.add_argument("--runs-dir", default=None, help="keep every run's directory here (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides for every run")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.runs_dir:
            tmp = args.runs_dir
        for experiment in args.experiments.split(","):
            runs = [run_one(experiment, seed, args.overrides, Path(tmp)) for seed in seeds]
            results.append(summarize(experiment, runs))
            r = results[-1]
            if "median_accuracy_after" in r:
                print(
                    f"{experiment:22s} {r['env']:12s} held-out accuracy {r['median_accuracy_before']:.3f} -> "
                    f"{r['median_accuracy_after']:.3f}, reward {r['median_reward_before']:.3f} -> "
                    f"{r['median_reward_after']:.3f} (GRPO {r['median_wall_s']:.1f} s; per seed "
                    + ", ".join(f"{p['accuracy']['before']:.3f}->{p['accuracy']['after']:.3f}" for p in r["per_seed"])
                    + ")",
                    flush=True,
                )
                continue
            print(
                f"{experiment:22s} {r['env']:12s} solved {r['solved']:5s} "
                f"frames-to-solve {_fmt(r['median_frames_to_solve'], ',.0f'):>9s} "
                f"wall-to-solve {_fmt(r['median_wall_s_to_solve'], '.1f'):>6s} s  "
                f"final {_fmt(r['median_final_return'], '.1f'):>7s}  best {_fmt(r['median_best_return'], '.1f'):>7s}  "
                f"(run: {_fmt(r['median_frames'], ',.0f')} frames, {_fmt(r['median_wall_s'], '.1f')} s)",
                flush=True,
            )
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

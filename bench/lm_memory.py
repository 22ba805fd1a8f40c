"""Peak memory of one language-model iteration against N (completions) and T (tokens), with
**default settings**: it must not grow with N x T x V.

One iteration = sample N = B x G completions of exactly T tokens, reference log-probs (beta > 0),
the critic's values (PPO), one optimizer step, on a Llama with SmolLM2's tokenizer and vocabulary
(V = 49,152) and a small body (so the logits dominate), fp32, 2 threads. Each configuration runs
in its own subprocess; printed: the peak RSS of the iteration above the process's RSS after
building the models, next to the size of one ``[N, T, V]`` fp32 logits tensor.

``--code DIR`` measures another checkout of plmods (e.g. a ``git worktree`` of an older commit:
the "before" column of the issue); its algorithm is built through the API that checkout has.

    .venv/bin/python -m bench.lm_memory                          # GRPO, REINFORCE, PPO on this checkout
    .venv/bin/python -m bench.lm_memory --algos grpo --code /tmp/before --out before.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
VOCAB = 49152
GROUP = 4
N_SWEEP = [(8, 64), (16, 64), (32, 64), (64, 64)]
T_SWEEP = [(8, 64), (8, 128), (8, 256), (8, 512)]


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _current_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024**2
    return 0.0


def model_dir(target: Path) -> Path:
    """A Llama with SmolLM2's tokenizer (pad == eos, V = 49,152) and a 2-layer, 64-wide body."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from plmods.models.smollm2 import prepare

    if (target / "config.json").is_file():
        return target
    tok = AutoTokenizer.from_pretrained(prepare())
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, max_position_embeddings=1024, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id, tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(target)
    tok.save_pretrained(target)
    return target


def _module(algo: str, path: str, n: int, t: int):
    """The algorithm with its defaults, through whichever API the imported plmods has."""
    from plmods.envs.text import AdditionTask
    from plmods.models.hf import HFCausalLM

    lm = HFCausalLM(path, chat_template=False)
    common = dict(rewards={"length": "tests.rewards_for_tests.length_reward"}, prompts_per_batch=n // GROUP, group_size=GROUP,
                  max_new_tokens=t, total_iterations=1, eval_problems=1, eval_batch_size=1, drop_uniform_groups=False)  # fmt: skip
    try:
        from plmods.algos.lm import LMModule
    except ImportError:  # plmods 0.1: GRPO only, GRPOModule(num_iterations=...)
        if algo != "grpo":
            raise SystemExit(f"this checkout has no {algo} for language models") from None
        from plmods.algos.grpo import GRPOModule

        return GRPOModule(env=AdditionTask(), model=lm, num_iterations=1, kl_coef=0.1, **common)
    kwargs = {"grpo": dict(epochs=1, kl_coef=0.1), "reinforce": dict(kl_coef=0.1), "ppo": dict(epochs=1)}[algo]
    return getattr(LMModule, algo)(AdditionTask(), lm, **kwargs, **common)


def worker(algo: str, path: str, n: int, t: int) -> dict:
    from lightning import Trainer

    from plmods.utils import configure_torch

    configure_torch(2)
    module = _module(algo, path, n, t)
    module.configure_model()
    sampler = module.rollout.sampler if hasattr(module, "rollout") else module.sampler
    sampler.generation_config.min_new_tokens = t  # every completion T tokens long
    start = _current_rss_gb()
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)  # fmt: skip
    module.on_train_start = lambda: None  # no evaluation
    trainer.fit(module)
    micro = getattr(module, "_micro_size", None) or module.hparams.get("micro_batch_size")
    return {"algo": algo, "n": n, "t": t, "peak_gb": _rss_gb() - start, "micro_batch_size": micro}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", default="grpo,reinforce,ppo")
    parser.add_argument("--code", default=str(ROOT), help="the plmods checkout to measure")
    parser.add_argument("--out", default="lm_memory.json")
    parser.add_argument("--worker", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        algo, path, n, t = args.worker
        print(json.dumps(worker(algo, path, int(n), int(t))))
        return
    path = model_dir(Path(tempfile.gettempdir()) / "plmods_lm_memory_model")
    env = {**os.environ, "PYTHONPATH": f"{Path(args.code).absolute()}:{ROOT}", "OMP_NUM_THREADS": "2"}
    rows = []
    for algo in args.algos.split(","):
        for sweep, sizes in (("N", N_SWEEP), ("T", T_SWEEP)):
            for n, t in sizes:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", algo, str(path), str(n), str(t)]
                proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    print(f"{algo} {n}x{t} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                    continue
                row = {"sweep": sweep, **json.loads(proc.stdout.strip().splitlines()[-1]), "ntv_gb": n * t * VOCAB * 4 / 1024**3}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\ncode: {args.code}; V = {VOCAB}, default settings, fp32; peak RSS of one iteration above the built models (GB)")
    print(f"{'algo':<10}{'sweep':<6}{'N x T':>10}{'[N,T,V] fp32':>14}{'peak':>8}{'micro':>7}")
    for r in rows:
        print(f"{r['algo']:<10}{r['sweep']:<6}{r['n']:>5} x {r['t']:<4}{r['ntv_gb']:>14.2f}{r['peak_gb']:>8.2f}{str(r['micro_batch_size']):>7}")
    for algo in args.algos.split(","):
        for sweep in ("N", "T"):
            peaks = [r["peak_gb"] for r in rows if r["algo"] == algo and r["sweep"] == sweep]
            if len(peaks) > 1:
                print(f"{algo} growth across the {sweep} sweep: {peaks[-1] - peaks[0]:+.2f} GB")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps({"code": args.code, "rows": rows}, indent=2))
    print(f"-> {RESULTS / args.out}")


if __name__ == "__main__":
    main()

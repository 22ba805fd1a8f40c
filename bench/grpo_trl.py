"""TRL's ``GRPOTrainer`` on plmods' tiny model and addition task: a throughput reference.

Trains ``trl.GRPOTrainer`` (TRL 1.16) with the settings of ``configs/experiment/grpo_addition.yaml``:
``prompts_per_batch`` prompts x ``group_size`` completions per generation round, ``num_iterations``
(mu) optimizer steps per round, each over the whole round (no minibatching, no accumulation),
plain sampling at temperature 1, AdamW at a constant learning rate, clip 0.2, token-mean loss,
advantages scaled by the group std, no reference model when ``beta`` is 0. The prompts are the
same stream plmods draws (``AdditionTask.sample`` with ``random.Random(seed)``, held-out problems
excluded), already wrapped in the tokenizer's chat template so TRL sees plain-text prompts and the
reward (``plmods.rewards.exact_match``) gets plain-text completions.

Held-out accuracy is measured before and after training like ``LMModule.evaluate``: one sampled
completion per held-out problem (200 problems, ``seed + 1_000_003``), temperature 1, fixed seed.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/grpo_trl.py --model-dir ~/.cache/plmods/sft/<hash> --iterations 20

Without ``--model-dir`` the newest SFT warm-up under ``~/.cache/plmods/sft`` is used, or, if there is
none, the fresh tiny model (``TinyCausalLM().build(seed=0)``) saved to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from plmods.algos.iteration import EVAL_SEED_OFFSET  # noqa: E402  (held-out set and eval seed as LMModule)


def _chat(tokenizer, prompt: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )


@torch.no_grad()
def heldout_accuracy(model, tokenizer, heldout: list[dict], max_new_tokens: int, seed: int) -> float:
    """One sampled completion per held-out problem (one batch, fixed seed, RNG state restored)."""
    from transformers import GenerationConfig

    from plmods.rewards.math import exact_match
    from plmods.rollout.sampler import response_mask

    was_training = model.training
    model.eval()
    texts = [_chat(tokenizer, p["prompt"]) for p in heldout]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed + EVAL_SEED_OFFSET)
        out = model.generate(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], generation_config=config
        )
    response = out[:, enc["input_ids"].shape[1] :]
    keep = response_mask(response, tokenizer.eos_token_id)  # up to and including the first eos
    response = response.masked_fill(~keep, tokenizer.pad_token_id)
    completions = tokenizer.batch_decode(response, skip_special_tokens=True)
    scores = exact_match([p["prompt"] for p in heldout], completions, [p["answer"] for p in heldout])
    model.train(was_training)
    return sum(scores) / len(scores)


def default_model_dir() -> str:
    """The newest SFT warm-up in ``~/.cache/plmods/sft``, else the fresh tiny model in a temp dir."""
    cache = Path(os.path.expanduser(os.environ.get("PLMODS_CACHE", "~/.cache/plmods"))) / "sft"
    dirs = sorted(
        (d for d in cache.glob("*") if (d / "config.json").is_file()), key=lambda d: d.stat().st_mtime
    )
    if dirs:
        return str(dirs[-1])
    from plmods.models.lm import TinyCausalLM

    lm = TinyCausalLM()
    out = tempfile.mkdtemp(prefix="grpo_trl_fresh_")
    lm.save(lm.build(seed=0), out)
    return out


def run_trl(
    model_dir: str,
    iterations: int = 20,
    prompts_per_batch: int = 16,
    group_size: int = 8,
    num_iterations: int = 2,
    max_new_tokens: int = 8,
    lr: float = 1e-3,
    beta: float = 0.0,
    seed: int = 0,
    eval_problems: int = 200,
) -> dict:
    """Train TRL GRPO for ``iterations`` generation rounds; throughput, memory and accuracy."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)

    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from plmods.envs.text import AdditionTask
    from plmods.models.lm import TinyCausalLM
    from plmods.rewards.math import exact_match

    lm = TinyCausalLM(path=model_dir)
    model, tokenizer = lm.build(), lm.tokenizer
    task = AdditionTask(digits=2)
    heldout = task.heldout(eval_problems, seed=seed + EVAL_SEED_OFFSET)
    task.exclude(heldout)
    # the prompt stream of plmods' LMModule: successive task.sample(B, rng) calls with one rng
    problems = task.sample(iterations * prompts_per_batch, random.Random(seed))
    dataset = Dataset.from_list(
        [{"prompt": _chat(tokenizer, p["prompt"]), "answer": p["answer"]} for p in problems]
    )

    accuracy_before = heldout_accuracy(model, tokenizer, heldout, max_new_tokens, seed)

    # the reward is called once per generation round with all of its completions: record there
    rounds: list[dict] = []

    def correct(prompts, completions, answer, completion_ids=None, **kwargs):
        rewards = exact_match(prompts, completions, answer)
        rounds.append(
            {
                "t": time.perf_counter(),
                "n": len(completions),
                "reward": sum(rewards) / len(rewards),
                "tokens": sum(len(ids) for ids in completion_ids),  # incl. the eos, as plmods counts
            }
        )
        return rewards

    class Record(TrainerCallback):
        def __init__(self) -> None:
            self.logs: list[dict] = []
            self.threads: int | None = None
            self.optimizer_steps = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.threads = torch.get_num_threads()

        def on_step_end(self, args, state, control, **kwargs):
            self.optimizer_steps += 1

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs or {}))

    batch = prompts_per_batch * group_size
    output_dir = tempfile.mkdtemp(prefix="grpo_trl_out_")
    config = GRPOConfig(
        output_dir=output_dir,
        # one generation round = one training batch of B*G completions, one optimizer step per pass
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        steps_per_generation=1,  # generation_batch_size = batch
        num_generations=group_size,
        num_iterations=num_iterations,  # mu: the round is reused for mu optimizer steps
        max_steps=iterations * num_iterations,
        shuffle_dataset=False,  # rounds in plmods' draw order
        # sampling
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        min_p=None,
        repetition_penalty=1.0,
        max_completion_length=max_new_tokens,
        # loss
        beta=beta,
        epsilon=0.2,
        loss_type="dapo",  # sum over all completion tokens of the batch / their count
        scale_rewards="group",
        mask_truncated_completions=False,
        # optimizer
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        optim="adamw_torch",
        max_grad_norm=1.0,
        # machinery
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        seed=seed,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        log_completions=False,
    )
    record = Record()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=correct,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[record],
    )
    ref_model = trainer.ref_model is not None

    # time split: sampling (TRL's _generate: tokenize, model.generate, decode) inside
    # _generate_and_score_completions (+ rewards, the old-log-prob forward, advantages); the rest of
    # the training wall time is the mu loss forward/backward/optimizer steps per round
    timers = {"generate_s": 0.0, "generate_and_score_s": 0.0, "logps_s": 0.0}
    calls = {"generate_s": 0, "generate_and_score_s": 0, "logps_s": 0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timers[name] += time.perf_counter() - t0

        return wrapper

    trainer._generate = timed("generate_s", trainer._generate)
    trainer._generate_and_score_completions = timed(
        "generate_and_score_s", trainer._generate_and_score_completions
    )
    # log-prob forwards: per round TRL runs one no-grad pass for the old log-probs (mu > 1) and mu
    # loss passes (and one per round on the reference model when beta > 0)
    trainer._get_per_token_logps_and_entropies = timed("logps_s", trainer._get_per_token_logps_and_entropies)

    torch.set_num_threads(1)
    start = time.perf_counter()
    trainer.train()
    wall_s = time.perf_counter() - start

    policy = trainer.accelerator.unwrap_model(trainer.model)
    accuracy_after = heldout_accuracy(policy, tokenizer, heldout, max_new_tokens, seed)

    tokens = sum(r["tokens"] for r in rounds)
    completions = sum(r["n"] for r in rounds)
    logged_lengths = [
        log["completions/mean_length"] for log in record.logs if "completions/mean_length" in log
    ]
    train_log = next((log for log in record.logs if "train_runtime" in log), {})
    return {
        "trl_version": trl.__version__,
        "model_dir": model_dir,
        "iterations": iterations,
        "prompts_per_batch": prompts_per_batch,
        "group_size": group_size,
        "num_iterations": num_iterations,
        "max_new_tokens": max_new_tokens,
        "lr": lr,
        "beta": beta,
        "seed": seed,
        "loss_type": config.loss_type,
        "steps_per_generation": config.steps_per_generation,
        "generation_batch_size": config.generation_batch_size,
        "ref_model": ref_model,
        "torch_threads_in_training": record.threads,
        "generation_rounds": len(rounds),
        "optimizer_steps": record.optimizer_steps,
        "wall_s": wall_s,
        "generation_batches_per_s": len(rounds) / wall_s,
        "optimizer_steps_per_s": record.optimizer_steps / wall_s,
        "generated_tokens": tokens,
        "generated_tokens_per_s": tokens / wall_s,
        "mean_completion_length": tokens / max(completions, 1),
        "mean_completion_length_logged": sum(logged_lengths) / len(logged_lengths)
        if logged_lengths
        else None,
        "trainer_train_runtime_s": train_log.get("train_runtime"),
        "generate_s": timers["generate_s"],
        "score_and_old_logprobs_s": timers["generate_and_score_s"] - timers["generate_s"],
        "update_and_rest_s": wall_s - timers["generate_and_score_s"],
        "logprob_forwards": calls["logps_s"],
        "logprob_forwards_per_round": calls["logps_s"] / max(len(rounds), 1),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        / 1024**2,  # ru_maxrss is KiB on Linux
        "heldout_accuracy_before": accuracy_before,
        "heldout_accuracy_after": accuracy_after,
        "train_reward_per_round": [r["reward"] for r in rounds],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=None, help="saved transformers checkpoint (model + tokenizer)")
    parser.add_argument("--iterations", type=int, default=20, help="generation rounds")
    parser.add_argument("--prompts-per-batch", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--num-iterations", type=int, default=2, help="mu: optimizer steps per round")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-problems", type=int, default=200)
    parser.add_argument("--out", default=None, help="also write the result JSON here")
    args = parser.parse_args()
    result = run_trl(
        model_dir=args.model_dir or default_model_dir(),
        iterations=args.iterations,
        prompts_per_batch=args.prompts_per_batch,
        group_size=args.group_size,
        num_iterations=args.num_iterations,
        max_new_tokens=args.max_new_tokens,
        lr=args.lr,
        beta=args.beta,
        seed=args.seed,
        eval_problems=args.eval_problems,
    )
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

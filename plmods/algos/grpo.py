"""GRPO for causal language models (Shao et al. 2024, DeepSeekMath; seeds 001 and 003).

One Lightning epoch is one GRPO iteration::

    B prompts from the task, G sampled completions each (N = B * G)        make_batch, no grad
    rewards r = sum_k w_k * reward_k(prompts, completions, **fields)      [B, G]
    advantages: outcome (r - mean_g) / (std_g + eps), or process (seed 003)
    old log-probs: the sampler's own logits (no second forward); reference log-probs when beta > 0
    mu passes x minibatches of torchrl's GRPOLoss (MaskedGRPOLoss)      update

    J = E[ 1/G sum_i 1/|o_i| sum_t min(ratio_it A_it, clip(ratio_it, 1 - eps_low, 1 + eps_high) A_it)
           - beta * KL_k3(pi_theta || pi_ref) ],   ratio_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | ...)

The policy is a transformers causal LM; the frozen reference is a copy of it taken when training
starts (after the optional SFT warm-up), moved by the ``RefPolicySync`` callback. With beta = 0
no reference exists and no reference forward runs.
"""

from __future__ import annotations

import bisect
import copy
import logging
import random
import time
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.loggers import WandbLogger
from tensordict import TensorDict
from transformers import GenerationConfig

from plmods.algos.grpo_loss import AGGREGATIONS, MaskedGRPOLoss, ResponseScorer
from plmods.algos.iteration import EVAL_SEED_OFFSET, IterationModule
from plmods.envs.text import TextTask
from plmods.errors import require
from plmods.models.lm import TinyCausalLM
from plmods.models.sft import SFTWarmup, tokenize_prompts
from plmods.rewards.combine import RewardFunctions, resolve_callable
from plmods.rollout.group_advantage import GroupRelativeAdvantage
from plmods.utils import rng_state

__all__ = ["GRPOModule"]

log = logging.getLogger(__name__)

ADVANTAGES = ("outcome", "process")


class GRPOModule(IterationModule):
    """GRPO on a text task with verifiable rewards.

    Args:
        env: the text task (``AdditionTask``, ``CountdownTask``): prompts, fields, held-out set.
        model: ``(model, tokenizer)`` factory (``TinyCausalLM``; ``path=`` loads a local checkpoint).
        rewards: ``name -> dotted path`` or ``name -> {fn, weight}``; summed with their weights.
        accuracy_reward: the reward term whose value 1 means "correct" (``val/accuracy``);
            null uses the first term.
        advantage: ``outcome`` (one reward per completion) or ``process`` (step rewards).
        process_reward: dotted path of the step-reward function (``advantage=process``).
        prompts_per_batch: prompts per iteration (B).
        group_size: completions sampled per prompt (G >= 2).
        max_new_tokens: completion length limit.
        temperature: sampling temperature (the loss scores with the same temperature).
        num_iterations: passes (mu) of optimizer steps over each generation round.
        minibatch_size: completions per optimizer step; null: all of the round in one step.
        total_iterations: GRPO iterations (generation rounds) to train for.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        max_grad_norm: clip the global gradient norm (null: no clipping).
        clip_epsilon: ratio clip (lower side, and upper side unless ``clip_epsilon_high``).
        clip_epsilon_high: upper clip of DAPO's clip-higher (null: symmetric).
        kl_coef: beta of the k3 KL to the reference (0: no reference policy at all).
        aggregation: ``token_mean`` (all response tokens of the batch) or ``sequence_mean``
            (per-completion mean, then mean: the 1/|o_i| of the GRPO objective).
        entropy_coeff: entropy bonus weight (0: off).
        std_normalize: divide advantages by the group std (false: Dr. GRPO's centring only).
        drop_uniform_groups: skip groups whose rewards are all equal (zero advantage) in the update.
        sft: supervised warm-up applied when the module is built (null: none).
        seed: prompt-draw and sampling seed (rank r uses seed + 10007 r).
        eval_problems: held-out problems per evaluation (one sampled answer each).
        eval_batch_size: prompts generated together during evaluation.
        logged_samples: completions per evaluation sent to W&B as a table (and to summary.json).
    """

    val_metrics = ("val/accuracy", "val/reward_mean")

    def __init__(
        self,
        env: TextTask,
        model: TinyCausalLM | None = None,
        rewards: Mapping[str, Any] | None = None,
        accuracy_reward: str | None = None,
        advantage: str = "outcome",
        process_reward: str | None = None,
        prompts_per_batch: int = 16,
        group_size: int = 8,
        max_new_tokens: int = 8,
        temperature: float = 1.0,
        num_iterations: int = 2,
        minibatch_size: int | None = None,
        total_iterations: int = 60,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = 1.0,
        clip_epsilon: float = 0.2,
        clip_epsilon_high: float | None = None,
        kl_coef: float = 0.0,
        aggregation: str = "token_mean",
        entropy_coeff: float = 0.0,
        std_normalize: bool = True,
        drop_uniform_groups: bool = True,
        sft: SFTWarmup | None = None,
        seed: int = 0,
        eval_problems: int = 200,
        eval_batch_size: int = 200,
        logged_samples: int = 16,
    ) -> None:
        super().__init__()
        require(
            isinstance(env, TextTask),
            f"algo=grpo needs a text task (env=addition or env=countdown), got {type(env).__name__}; "
            "the presets experiment=grpo_addition and experiment=grpo_countdown set env and model.",
        )
        require(
            model is None or isinstance(model, TinyCausalLM),
            f"algo=grpo needs a causal LM factory (model=tiny_lm), got {type(model).__name__}.",
        )
        rewards = {"correct": "plmods.rewards.exact_match"} if rewards is None else rewards
        require(prompts_per_batch >= 1, f"algo.prompts_per_batch must be >= 1, got {prompts_per_batch}.")
        require(group_size >= 2, f"algo.group_size must be >= 2 (advantages compare completions of a prompt), got {group_size}.")
        require(max_new_tokens >= 1, f"algo.max_new_tokens must be >= 1, got {max_new_tokens}.")
        require(temperature > 0, f"algo.temperature must be > 0, got {temperature}.")
        require(num_iterations >= 1, f"algo.num_iterations must be >= 1, got {num_iterations}.")
        require(minibatch_size is None or minibatch_size >= 1, f"algo.minibatch_size must be >= 1 or null, got {minibatch_size}.")
        require(total_iterations >= 1, f"algo.total_iterations must be >= 1, got {total_iterations}.")
        require(lr > 0, f"algo.lr must be > 0, got {lr}.")
        require(max_grad_norm is None or max_grad_norm > 0, f"algo.max_grad_norm must be > 0 or null, got {max_grad_norm}.")
        require(0 < clip_epsilon < 1, f"algo.clip_epsilon must be in (0, 1), got {clip_epsilon}.")
        require(clip_epsilon_high is None or clip_epsilon_high > 0, f"algo.clip_epsilon_high must be > 0 or null, got {clip_epsilon_high}.")
        require(kl_coef >= 0, f"algo.kl_coef must be >= 0, got {kl_coef}.")
        require(aggregation in AGGREGATIONS, f"algo.aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}.")
        require(advantage in ADVANTAGES, f"algo.advantage must be one of {', '.join(ADVANTAGES)}, got {advantage!r}.")
        require(
            (advantage == "process") == (process_reward is not None),
            "algo.process_reward must be set exactly when algo.advantage=process "
            f"(got advantage={advantage!r}, process_reward={process_reward!r}).",
        )
        require(eval_problems >= 1, f"algo.eval_problems must be >= 1, got {eval_problems}.")
        require(eval_batch_size >= 1, f"algo.eval_batch_size must be >= 1, got {eval_batch_size}.")
        self.reward_fns = RewardFunctions(rewards)
        names = [name for name, _, _ in self.reward_fns.terms]
        require(
            accuracy_reward is None or accuracy_reward in names,
            f"algo.accuracy_reward={accuracy_reward!r} is not one of algo.rewards ({', '.join(names)}).",
        )
        self.save_hyperparameters(ignore=["env", "model", "sft"])
        self.task = env
        self.model_factory = model or TinyCausalLM()
        self.accuracy_reward = accuracy_reward or names[0]
        self.advantage = advantage
        self.process_reward = resolve_callable(process_reward, "algo.process_reward") if process_reward else None
        self.prompts_per_batch = prompts_per_batch
        self.group_size = group_size
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.num_iterations = num_iterations
        self.minibatch_size = minibatch_size
        self.total_iterations = total_iterations
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_grad_norm = max_grad_norm
        self.drop_uniform_groups = drop_uniform_groups
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.logged_samples = logged_samples
        self.group_advantage = GroupRelativeAdvantage(std_normalize=std_normalize)

        self.heldout = env.heldout(eval_problems, seed=seed + EVAL_SEED_OFFSET)
        env.exclude(self.heldout)
        policy, self.tokenizer = self.model_factory.build(seed=seed)
        self.sft_stats = sft.apply(policy, self.tokenizer, env, self.model_factory.config_key()) if sft else None
        # the reference is the warmed-up policy, frozen (in the state dict: RefPolicySync moves it)
        self.ref_policy = copy.deepcopy(policy).requires_grad_(False) if kl_coef > 0 else None
        self.loss_module = MaskedGRPOLoss(
            ResponseScorer(policy, temperature),
            clip_epsilon=(clip_epsilon, clip_epsilon_high or clip_epsilon),
            aggregation=AGGREGATIONS[aggregation],
            entropy_bonus=entropy_coeff > 0,
            entropy_coeff=entropy_coeff,
            kl_to_ref_coeff=kl_coef,
        )
        sampling = dict(
            do_sample=True,
            temperature=temperature,
            top_k=0,  # plain sampling from softmax(logits / T): the distribution the loss scores
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            return_dict_in_generate=True,
        )
        self._sampling = GenerationConfig(**sampling, output_logits=True)  # training: keep logits
        self._eval_sampling = GenerationConfig(**sampling)
        # characters per token, to place step ends (process rewards are in characters)
        self._token_chars = [len(self.tokenizer.decode([i], skip_special_tokens=True)) for i in range(len(self.tokenizer))]
        self.measured_kl: float | None = None  # AdaptiveKL protocol: the iteration's KL to the reference
        self._prompt_rng = random.Random(seed)
        self.last_samples: list[dict[str, Any]] = []
        self._perf: dict[str, float] = {}

    # ------------------------------------------------------------------ policy and beta
    @property
    def policy(self) -> torch.nn.Module:
        """The trained causal LM (RefPolicySync protocol: ``policy`` and ``ref_policy``)."""
        return self.loss_module.actor_network.model

    @property
    def kl_coef(self) -> float:
        """beta of the KL to the reference (AdaptiveKL protocol)."""
        return float(self.loss_module.kl_to_ref_coeff or 0.0)

    @kl_coef.setter
    def kl_coef(self, value: float) -> None:
        require(self.ref_policy is not None, "the KL coefficient cannot be adapted: algo.kl_coef=0 means no reference policy.")
        self.loss_module.kl_to_ref_coeff = float(value)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.policy.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self._trainer is not None and self.ref_policy is None:
            from plmods.callbacks.kl_adaptive import AdaptiveKL

            require(
                not any(isinstance(c, AdaptiveKL) for c in self.trainer.callbacks),
                "callbacks.adaptive_kl adapts the KL to a reference policy, but algo.kl_coef=0 builds none: "
                "set algo.kl_coef > 0 (e.g. 0.04) or drop the callback.",
            )
        if stage == "fit" and self._trainer is not None and self.global_rank > 0:
            self._prompt_rng = random.Random(self.rank_seed())
            torch.manual_seed(self.rank_seed())

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, prompts: list[str], repeats: int = 1, old_log_probs: bool = False) -> TensorDict:
        """Sample ``repeats`` completions per prompt. Returns a TensorDict ``[N]`` with
        ``input_ids``/``attention_mask`` (prompt + response), ``response_tokens``,
        ``response_mask`` (tokens up to and including eos) and, if asked, ``old_log_probs``
        computed from the sampler's own logits (the policy that sampled: no second forward)."""
        prompt_ids, prompt_mask = tokenize_prompts(self.tokenizer, prompts)
        device = self.policy.device
        prompt_ids = prompt_ids.repeat_interleave(repeats, 0).to(device)  # [N, P]
        prompt_mask = prompt_mask.repeat_interleave(repeats, 0).to(device)
        out = self.policy.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            generation_config=self._sampling if old_log_probs else self._eval_sampling,
        )
        response = out.sequences[:, prompt_ids.shape[1] :]  # [N, T]
        is_eos = response == self.tokenizer.eos_token_id
        response_mask = (is_eos.cumsum(-1) - is_eos.long()) == 0  # up to and including the first eos
        response = response.masked_fill(~response_mask, self.tokenizer.pad_token_id)
        batch = TensorDict(
            input_ids=torch.cat([prompt_ids, response], -1),
            attention_mask=torch.cat([prompt_mask, response_mask.long()], -1),
            response_tokens=response,
            response_mask=response_mask,
            batch_size=[response.shape[0]],
            device=device,
        )
        if old_log_probs:
            logits = torch.stack(out.logits, 1).float() / self.temperature  # [N, T, V]
            log_probs = logits.log_softmax(-1).gather(-1, response.unsqueeze(-1)).squeeze(-1)
            batch["old_log_probs"] = log_probs.masked_fill(~response_mask, 0.0)
        return batch

    def completions(self, batch: TensorDict) -> list[str]:
        return self.tokenizer.batch_decode(batch["response_tokens"], skip_special_tokens=True)

    @staticmethod
    def _fields(problems: list[dict[str, Any]]) -> dict[str, list[Any]]:
        """Problem fields other than the prompt, as reward-function keyword arguments."""
        return {key: [p[key] for p in problems] for key in problems[0] if key != "prompt"}

    def score(self, problems: list[dict[str, Any]], completions: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total reward ``[N]`` and each term, for ``completions`` of ``problems`` (same order)."""
        return self.reward_fns([p["prompt"] for p in problems], completions, self._fields(problems))

    # ------------------------------------------------------------------ one iteration
    def make_batch(self) -> TensorDict:
        start = time.perf_counter()
        problems = self.task.sample(self.prompts_per_batch, self._prompt_rng)
        batch = self.generate([p["prompt"] for p in problems], self.group_size, old_log_probs=True)
        generate_s = time.perf_counter() - start
        repeated = [p for p in problems for _ in range(self.group_size)]
        texts = self.completions(batch)
        rewards, terms = self.score(repeated, texts)  # [N], on the CPU
        B, G, T = len(problems), self.group_size, batch["response_tokens"].shape[-1]
        if self.advantage == "outcome":
            advantage = self.group_advantage.outcome(rewards.view(B, G)).reshape(-1, 1, 1).expand(-1, T, 1)
        else:
            steps = self.process_reward([p["prompt"] for p in repeated], texts, **self._fields(repeated))
            token_steps = [self._steps_to_tokens(s, row) for s, row in zip(steps, batch["response_tokens"], strict=True)]
            grouped = [token_steps[b * G : (b + 1) * G] for b in range(B)]
            advantage = self.group_advantage.process(grouped, T).reshape(-1, T, 1)
        batch["advantage"] = advantage.contiguous().to(batch.device)  # [N, T, 1]
        batch["prompt_group"] = torch.arange(B, device=batch.device).repeat_interleave(G)  # each prompt runs once
        keep = torch.ones(B, dtype=torch.bool)
        if self.drop_uniform_groups and self.world_size == 1:
            # all-equal groups have zero advantage; under DDP every rank must run the same number
            # of backward passes, so they are kept there (contributing nothing but tokens)
            keep = rewards.view(B, G).std(-1) > 0
        response_tokens = batch["response_mask"].sum().cpu()
        self.accumulate_iteration(
            {
                "reward": rewards.mean(),
                **{f"reward/{name}": value.mean() for name, value in terms.items()},
                "accuracy": (terms[self.accuracy_reward] >= 1.0).float().mean(),
                "completion_length": response_tokens / batch.shape[0],
                "groups_kept": keep.float().mean(),
            }
        )
        self._perf = {"perf/generate_s": generate_s, "perf/generated_tokens_per_s": float(response_tokens) / max(generate_s, 1e-9)}
        batch = batch[keep.repeat_interleave(G).to(batch.device)]  # [N_kept]
        if self.ref_policy is not None and batch.shape[0]:
            batch["ref_log_probs"] = ResponseScorer(self.ref_policy, self.temperature).log_probs(batch)
        return batch

    def _steps_to_tokens(self, steps: list[tuple[int, float]], tokens: torch.Tensor) -> list[tuple[int, float]]:
        """Step ends in characters -> the index of the token that completes each step."""
        ends, total = [], 0
        for token in tokens.tolist():
            total += self._token_chars[token]
            ends.append(total)
        return [(min(bisect.bisect_left(ends, end), len(ends) - 1), reward) for end, reward in steps]

    def update(self, batch: TensorDict) -> None:
        start = time.perf_counter()
        self.measured_kl = None  # no update, no measurement: AdaptiveKL then leaves beta alone
        n = batch.shape[0]
        size = self.minibatch_size or max(n, 1)
        for _ in range(self.num_iterations if n else 0):
            order = torch.randperm(n, device=batch.device) if size < n else torch.arange(n, device=batch.device)
            for first in range(0, n, size):
                minibatch = batch[order[first : first + size]]
                # drop columns that are padding in every row of this minibatch
                minibatch = self._trim(minibatch)
                out = self.loss_module(minibatch)
                loss = self.total_loss(out)
                grad_norm = self.optimizer_step(loss, self.max_grad_norm)
                metrics = {
                    "loss_objective": out.loss_objective.detach().reshape(()),
                    "clip_fraction": out.clip_fraction,
                    "approx_kl": out.kl_approx,
                    "ESS": out.ESS,
                }
                if out.kl_to_ref is not None:
                    metrics["kl_to_ref"] = out.kl_to_ref
                if out.entropy is not None:
                    metrics["entropy"] = out.entropy
                if grad_norm is not None:
                    metrics["grad_norm"] = grad_norm
                self.accumulate(metrics)
        if self.ref_policy is not None and "kl_to_ref" in self._metric_sums:
            self.measured_kl = float(self.sum_over_ranks(self.iteration_mean("kl_to_ref")) / self.world_size)
        self._perf["perf/update_s"] = time.perf_counter() - start

    def iteration_logs(self) -> dict[str, float | torch.Tensor]:
        return {**super().iteration_logs(), **self._perf}

    @staticmethod
    def _trim(batch: TensorDict) -> TensorDict:
        prompt_len = batch["input_ids"].shape[-1] - batch["response_tokens"].shape[-1]
        used = batch["attention_mask"][:, :prompt_len].any(0)
        first = int(used.nonzero()[0]) if used.any() else 0
        last = int(batch["response_mask"].any(0).nonzero().max()) + 1 if batch["response_mask"].any() else 1
        trimmed = batch.clone(False)
        for key in ("input_ids", "attention_mask"):
            trimmed[key] = batch[key][:, first : prompt_len + last]
        for key in ("response_tokens", "response_mask", "old_log_probs", "ref_log_probs", "advantage"):
            if key in batch.keys():  # noqa: SIM118 (TensorDict has no __contains__ for keys)
                trimmed[key] = batch[key][:, :last]
        return trimmed

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self.budget_spent():
            self.trainer.should_stop = True

    # ------------------------------------------------------------------ evaluation
    def budget_spent(self) -> bool:
        return self.iteration >= self.total_iterations

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.iteration == 0 and not self.val_history:
            self._record_evaluation(self.evaluate())  # "before": the warmed-up policy

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """One sampled answer per held-out problem, with a fixed seed (the same draws every time,
        and the training RNG untouched)."""
        completions: list[str] = []
        with torch.random.fork_rng():
            torch.manual_seed(self.seed + EVAL_SEED_OFFSET)
            for first in range(0, len(self.heldout), self.eval_batch_size):
                chunk = self.heldout[first : first + self.eval_batch_size]
                completions += self.completions(self.generate([p["prompt"] for p in chunk]))
        rewards, terms = self.score(self.heldout, completions)
        correct = terms[self.accuracy_reward] >= 1.0
        samples = [
            {"prompt": p["prompt"], "completion": c, "answer": p.get("answer"), "reward": float(r)}
            for p, c, r in list(zip(self.heldout, completions, rewards, strict=True))[: self.logged_samples]
        ]
        return {
            "val/reward_mean": float(rewards.mean()),
            "val/accuracy": float(correct.float().mean()),
            **{f"val/reward/{name}": float(value.mean()) for name, value in terms.items()},
            "samples": samples,
        }

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        result = self.evaluate()
        sync = self.world_size > 1
        metrics = {k: v for k, v in result.items() if k.startswith("val/")}
        self.log("val/accuracy", metrics.pop("val/accuracy"), prog_bar=True, sync_dist=sync, batch_size=1)
        self.log_dict(metrics, sync_dist=sync, batch_size=1)
        self._pending_eval = result

    def on_validation_epoch_end(self) -> None:
        result = getattr(self, "_pending_eval", None)
        if result is not None and not self.trainer.sanity_checking:
            self._record_evaluation(result)
        self._pending_eval = None

    def _record_evaluation(self, result: dict[str, Any]) -> None:
        row = {"iteration": self.iteration, "wall_s": self.elapsed_seconds()}
        row.update({k: v for k, v in result.items() if k.startswith("val/")})
        self.val_history.append(row)
        self.last_samples = result["samples"]
        if self._trainer is None:
            return
        if not self.val_history[:-1]:  # the "before" row is logged by hand (outside validation)
            for logger in self.loggers:
                logger.log_metrics({k: v for k, v in row.items() if k.startswith("val/")}, step=self.trainer.global_step)
        for logger in self.loggers:
            if isinstance(logger, WandbLogger) and self.trainer.is_global_zero:
                logger.log_table(
                    key="val/samples",
                    columns=["iteration", "prompt", "completion", "answer", "reward"],
                    data=[[self.iteration, s["prompt"], s["completion"], s["answer"], s["reward"]] for s in result["samples"]],
                )

    def summary(self) -> dict[str, Any]:
        """Headline numbers for ``summary.json``: held-out reward and accuracy before and after."""
        history = self.val_history

        def at(row: dict[str, Any] | None, key: str) -> float | None:
            return None if row is None else row.get(key)

        before = history[0] if history and history[0]["iteration"] == 0 else None
        after = history[-1] if history else None
        threshold = self.task.solved_threshold
        solved_row = next((r for r in history if threshold is not None and r["val/accuracy"] >= threshold), None)
        return {
            "env": self.task.name,
            "iterations": self.iteration,
            "val/reward_mean": {"before": at(before, "val/reward_mean"), "after": at(after, "val/reward_mean")},
            "val/accuracy": {
                "before": at(before, "val/accuracy"),
                "after": at(after, "val/accuracy"),
                "best": max((r["val/accuracy"] for r in history), default=None),
            },
            "solved_threshold": threshold,
            "solved": solved_row is not None,
            "solved_at": solved_row,
            "sft": self.sft_stats,
            "samples": self.last_samples,
        }

    def summary_line(self) -> str:
        acc = self.summary()["val/accuracy"]
        return f"{self.iteration} iterations, {self.train_seconds:.1f} s, held-out accuracy {acc['before']} -> {acc['after']}"

    def save_policy(self, path: str) -> None:
        """The trained policy and tokenizer as a transformers checkpoint (``model.path=`` loads it)."""
        self.policy.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        per_rank = self.gather_per_rank({"rng": rng_state(), "prompt_rng": self._prompt_rng.getstate()})
        return {**super().checkpoint_state(), "per_rank": per_rank, "kl_coef": self.kl_coef, "last_samples": self.last_samples}

    def load_checkpoint_state(self, saved: dict[str, Any]) -> None:
        super().load_checkpoint_state(saved)
        self.last_samples = saved.get("last_samples", [])
        if self.ref_policy is not None:
            self.loss_module.kl_to_ref_coeff = saved["kl_coef"]  # a float attribute, not in state_dict
        state = self.own_rank_state(saved["per_rank"])
        if state is not None:
            self._prompt_rng.setstate(state["prompt_rng"])
            self._pending_rng = state["rng"]

"""GRPO for causal language models (Shao et al. 2024, DeepSeekMath; seeds 001 and 003).

One Lightning epoch is one GRPO iteration::

    B prompts from the task, G sampled completions each (N = B * G)        make_batch, no grad
    rewards r = sum_k w_k * reward_k(prompts, completions, **fields)      [B, G]
    advantages: an injected object (outcome (r - mean_g) / (std_g + eps), process (seed 003), yours)
    old log-probs: recorded while sampling (no second forward); reference log-probs when beta > 0
    mu passes x minibatches (x micro-batches) of torchrl's GRPOLoss (MaskedGRPOLoss)   update

    J = E[ 1/G sum_i 1/|o_i| sum_t min(ratio_it A_it, clip(ratio_it, 1 - eps_low, 1 + eps_high) A_it)
           - beta * KL_k3(pi_theta || pi_ref) ],   ratio_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | ...)

The policy is any transformers causal LM (``HFCausalLM``; full or LoRA), built in
``configure_model`` (so a sharded strategy can wrap it), with the frozen reference: a copy of the
policy, or with LoRA a second frozen adapter on the same network (``plmods.models.lora``), moved by
the ``RefPolicySync`` callback. With beta = 0 no reference exists and no reference forward runs.
The supervised warm-up is a callback of its own (``plmods.callbacks.SFTWarmup``).
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.loggers import WandbLogger
from tensordict import TensorDict

from plmods.algos.batch_plan import BatchPlan
from plmods.algos.grpo_loss import AGGREGATIONS, MaskedGRPOLoss, ResponseScorer
from plmods.algos.iteration import EVAL_SEED_OFFSET, IterationModule
from plmods.envs.text import TextTask
from plmods.errors import ConfigError, require
from plmods.models.hf import HFCausalLM
from plmods.models.lm import TinyCausalLM
from plmods.models.lora import adapter_tensors, add_reference_adapter, is_lora, reference_adapter
from plmods.models.sharding import full_state_dict, gathered, is_sharded, reshard, shard_causal_lm
from plmods.models.weights import mix_into, mix_tensors
from plmods.rewards.combine import RewardFunctions
from plmods.rollout.group_advantage import GroupRelativeAdvantage
from plmods.rollout.sampler import GroupSampler
from plmods.utils import rng_state

__all__ = ["GRPOModule"]

log = logging.getLogger(__name__)


class GRPOModule(IterationModule):
    """GRPO on a text task with verifiable rewards.

    Args:
        env: the text task (``AdditionTask``, ``CountdownTask``): prompts, fields, held-out set.
        model: the causal-LM factory (``HFCausalLM``: any local transformers directory, full or
            LoRA; ``TinyCausalLM`` by default).
        rewards: ``name -> dotted path`` or ``name -> {fn, weight}``; summed with their weights.
        accuracy_reward: the reward term whose value 1 means "correct" (``val/accuracy``);
            null uses the first term.
        advantage: the advantage object (``GroupRelativeAdvantage()``: outcome, by default;
            ``ProcessAdvantage(step_rewards=...)``; or any callable of the same keywords, see
            ``plmods.rollout.group_advantage``).
        prompts_per_batch: prompts per iteration (B).
        group_size: completions sampled per prompt (G >= 2).
        max_new_tokens: completion length limit.
        temperature: sampling temperature (the loss scores with the same temperature).
        num_iterations: passes (mu) of optimizer steps over each generation round.
        minibatch_size: completions per optimizer step; null: all of the round in one step.
        micro_batch_size: completions per forward/backward pass (gradients accumulate over the
            micro-batches of a minibatch, so the step is the same); null: the whole minibatch.
            Also bounds the reference forward: at most micro_batch_size x T x V logits exist.
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
        drop_uniform_groups: skip the forward and backward passes of groups whose advantages are
            all zero (all-equal rewards). Exact: the step is the one with every completion (the
            loss is still normalised by all of the minibatch's tokens or completions, as TRL's),
            so it applies only when those rows carry no gradient at all (``kl_coef = 0`` and
            ``entropy_coeff = 0``) and on one process; otherwise every row runs.
        seed: prompt-draw and sampling seed (rank r uses seed + 10007 r).
        eval_problems: held-out problems per evaluation (one sampled answer each).
        eval_batch_size: prompts generated together during evaluation.
        logged_samples: completions per evaluation sent to W&B as a table (and to summary.json).
    """

    val_metrics = ("val/accuracy", "val/reward_mean")
    shards_parameters = True  # configure_model applies fully_shard under ModelParallelStrategy

    def __init__(
        self,
        env: TextTask,
        model: HFCausalLM | None = None,
        rewards: Mapping[str, Any] | None = None,
        accuracy_reward: str | None = None,
        advantage: Any = None,
        prompts_per_batch: int = 16,
        group_size: int = 8,
        max_new_tokens: int = 8,
        temperature: float = 1.0,
        num_iterations: int = 2,
        minibatch_size: int | None = None,
        micro_batch_size: int | None = None,
        total_iterations: int = 60,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = 1.0,
        clip_epsilon: float = 0.2,
        clip_epsilon_high: float | None = None,
        kl_coef: float = 0.0,
        aggregation: str = "token_mean",
        entropy_coeff: float = 0.0,
        drop_uniform_groups: bool = True,
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
            model is None or isinstance(model, HFCausalLM),
            f"algo=grpo needs a causal LM factory (model=hf_causal_lm, model=smollm2 or model=tiny_lm), got {type(model).__name__}.",
        )
        advantage = GroupRelativeAdvantage() if advantage is None else advantage
        require(callable(advantage), f"algo.advantage must be an advantage object (callable), got {type(advantage).__name__}.")
        rewards = {"correct": "plmods.rewards.exact_match"} if rewards is None else rewards
        require(prompts_per_batch >= 1, f"algo.prompts_per_batch must be >= 1, got {prompts_per_batch}.")
        require(group_size >= 2, f"algo.group_size must be >= 2 (advantages compare completions of a prompt), got {group_size}.")
        require(max_new_tokens >= 1, f"algo.max_new_tokens must be >= 1, got {max_new_tokens}.")
        require(temperature > 0, f"algo.temperature must be > 0, got {temperature}.")
        require(num_iterations >= 1, f"algo.num_iterations must be >= 1, got {num_iterations}.")
        require(minibatch_size is None or minibatch_size >= 1, f"algo.minibatch_size must be >= 1 or null, got {minibatch_size}.")
        require(micro_batch_size is None or micro_batch_size >= 1, f"algo.micro_batch_size must be >= 1 or null, got {micro_batch_size}.")
        require(total_iterations >= 1, f"algo.total_iterations must be >= 1, got {total_iterations}.")
        require(lr > 0, f"algo.lr must be > 0, got {lr}.")
        require(max_grad_norm is None or max_grad_norm > 0, f"algo.max_grad_norm must be > 0 or null, got {max_grad_norm}.")
        require(0 < clip_epsilon < 1, f"algo.clip_epsilon must be in (0, 1), got {clip_epsilon}.")
        require(clip_epsilon_high is None or clip_epsilon_high > 0, f"algo.clip_epsilon_high must be > 0 or null, got {clip_epsilon_high}.")
        require(kl_coef >= 0, f"algo.kl_coef must be >= 0, got {kl_coef}.")
        require(aggregation in AGGREGATIONS, f"algo.aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}.")
        require(eval_problems >= 1, f"algo.eval_problems must be >= 1, got {eval_problems}.")
        require(eval_batch_size >= 1, f"algo.eval_batch_size must be >= 1, got {eval_batch_size}.")
        completions = prompts_per_batch * group_size
        require(
            minibatch_size is None or completions % minibatch_size == 0,
            f"algo.minibatch_size={minibatch_size} must divide the completions of a round, algo.prompts_per_batch x "
            f"algo.group_size = {prompts_per_batch} x {group_size} = {completions} (or be null: one step per round).",
        )
        self.reward_fns = RewardFunctions(rewards)
        names = [name for name, _, _ in self.reward_fns.terms]
        require(
            accuracy_reward is None or accuracy_reward in names,
            f"algo.accuracy_reward={accuracy_reward!r} is not one of algo.rewards ({', '.join(names)}).",
        )
        self.save_hyperparameters(ignore=["env", "model", "advantage"])
        self.task = env
        self.model_factory = model or TinyCausalLM()
        self.tokenizer = self.model_factory.tokenizer
        self.accuracy_reward = accuracy_reward or names[0]
        self.advantage = advantage
        self.prompts_per_batch = prompts_per_batch
        self.group_size = group_size
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.num_iterations = num_iterations
        self.minibatch_size = minibatch_size
        self.micro_batch_size = micro_batch_size
        self.total_iterations = total_iterations
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_grad_norm = max_grad_norm
        self.drop_uniform_groups = drop_uniform_groups
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.logged_samples = logged_samples
        self.clip_epsilon = (clip_epsilon, clip_epsilon_high or clip_epsilon)
        self.aggregation = aggregation
        self.entropy_coeff = entropy_coeff
        self._kl_coef = float(kl_coef)  # beta: the module owns it (AdaptiveKL protocol), checkpointed
        self.has_reference = kl_coef > 0

        try:
            self.heldout = env.heldout(eval_problems, seed=seed + EVAL_SEED_OFFSET)
        except ValueError as err:  # the task has fewer distinct problems than asked
            raise ConfigError(f"eval_problems={eval_problems} is more than the task can hold out ({err}).") from None
        env.exclude(self.heldout)
        # built in configure_model (so a sharded strategy can wrap them): policy, reference, loss
        self.loss_module: MaskedGRPOLoss | None = None
        self.ref_policy: torch.nn.Module | None = None
        self.sft_stats: dict[str, Any] | None = None  # set by plmods.callbacks.SFTWarmup
        self.measured_kl: float | None = None  # AdaptiveKL protocol: the iteration's KL to the reference
        self._prompt_rng = random.Random(seed)
        self.last_samples: list[dict[str, Any]] = []
        self._perf: dict[str, float] = {}

    # ------------------------------------------------------------------ policy, reference and beta
    @property
    def policy_built(self) -> bool:
        return self.loss_module is not None

    def configure_model(self) -> None:
        """Build the policy (and the reference, and the loss on them) once: Lightning calls this
        before a checkpoint is restored, under every strategy; outside a Trainer call it yourself."""
        if self.loss_module is not None:
            return
        policy = self.model_factory.build(seed=self.seed)
        if self.has_reference:
            if is_lora(policy):
                add_reference_adapter(policy)  # same network, a frozen second adapter
            else:
                self.ref_policy = copy.deepcopy(policy).requires_grad_(False)
        mesh = self.device_mesh  # set by ModelParallelStrategy (trainer=fsdp / fsdp_sim)
        if mesh is not None:
            dp_mesh = mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh
            shard_causal_lm(policy, dp_mesh)  # with LoRA the reference adapter is sharded with it
            if self.ref_policy is not None:
                shard_causal_lm(self.ref_policy, dp_mesh)  # same structure: soft syncs stay shard-local
        scorer = ResponseScorer(policy, self.temperature, share_prompts=not self.model_factory.gradient_checkpointing)
        self.loss_module = MaskedGRPOLoss(
            scorer,
            clip_epsilon=self.clip_epsilon,
            aggregation=AGGREGATIONS[self.aggregation],
            entropy_bonus=self.entropy_coeff > 0,
            entropy_coeff=self.entropy_coeff,
            kl_to_ref_coeff=self._kl_coef,
        )

    @property
    def policy(self) -> torch.nn.Module:
        """The trained causal LM (a ``PeftModel`` with LoRA)."""
        require(self.loss_module is not None, "the policy is built in configure_model(): call it first (a Trainer does).")
        return self.loss_module.actor_network.model

    @torch.no_grad()
    def sync_reference(self, alpha: float) -> None:
        """``ref <- alpha * policy + (1 - alpha) * ref`` (RefPolicySync protocol): every weight of
        a full reference, or the reference adapter's weights with LoRA."""
        if self.ref_policy is not None:
            reshard(self.ref_policy)  # sharded: mixed shard by shard, no gather (no-op otherwise)
            reshard(self.policy)
            mix_into(self.ref_policy, self.policy, alpha)
            return
        mix_tensors(*adapter_tensors(self.policy), alpha)

    def ref_log_probs(self, batch: TensorDict) -> torch.Tensor:
        scorer = self.loss_module.actor_network
        with torch.no_grad():
            if self.ref_policy is not None:
                return ResponseScorer(self.ref_policy, self.temperature, scorer.share_prompts).log_probs(batch, self.micro_batch_size)
            with reference_adapter(self.policy):
                return scorer.log_probs(batch, self.micro_batch_size)

    @property
    def kl_coef(self) -> float | None:
        """beta of the KL to the reference (AdaptiveKL protocol); None without a reference."""
        return self._kl_coef if self.has_reference else None

    @kl_coef.setter
    def kl_coef(self, value: float) -> None:
        require(self.has_reference, "the KL coefficient cannot be adapted: algo.kl_coef=0 means no reference policy.")
        self._kl_coef = float(value)
        if self.loss_module is not None:
            self.loss_module.kl_to_ref_coeff = self._kl_coef

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trained = [p for p in self.policy.parameters() if p.requires_grad]
        # torch's fused AdamW kernel (CPU and CUDA): one pass over each tensor instead of a
        # per-op loop (measured on one CPU thread, 108M parameters: 0.49 s -> 0.13 s per step)
        fused = all(type(p) is torch.nn.Parameter and p.device.type in ("cpu", "cuda") for p in trained)
        return torch.optim.AdamW(trained, lr=self.lr, weight_decay=self.weight_decay, fused=fused or None)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self._trainer is not None and self.global_rank > 0:
            self._prompt_rng = random.Random(self.rank_seed())
            torch.manual_seed(self.rank_seed())

    def batch_plan(self, world_size: int = 1) -> BatchPlan:
        """Prompts, completions, minibatches, optimizer steps and micro-batches of one round."""
        plan = BatchPlan(world_size)
        completions = self.prompts_per_batch * self.group_size
        minibatch = self.minibatch_size or completions
        plan.add("prompts (B)", self.prompts_per_batch)
        plan.add("completions (B x G)", completions)
        plan.add("completions per optimizer step", minibatch)
        plan.add("optimizer steps (mu x minibatches)", self.num_iterations * (completions // minibatch), summed=False)
        micro = self.micro_batch_size or minibatch
        plan.add("micro-batches per step (accumulation)", -(-minibatch // micro), summed=False)
        plan.add("iterations", self.total_iterations, summed=False)
        if world_size > 1:
            plan.notes.append(f"held-out evaluation: the same {len(self.heldout)} problems on every rank (same seed)")
        return plan

    # ------------------------------------------------------------------ generation
    @property
    def sampler(self) -> GroupSampler:
        if getattr(self, "_sampler", None) is None or self._sampler.lm is not self.model_factory:
            self._sampler = GroupSampler(self.model_factory, self.max_new_tokens, self.temperature)
        return self._sampler

    def generate(self, prompts: list[str], repeats: int = 1, old_log_probs: bool = False) -> TensorDict:
        """Sample ``repeats`` completions per prompt (``rollout.sampler.GroupSampler``): a
        TensorDict ``[N]`` with ids, masks and, if asked, the sampler's own ``old_log_probs``."""
        # sharded (FSDP): the weights are gathered once for the whole generation, not once per
        # token and layer; then no collective runs inside generate and each rank stops at its own
        # length (transformers' synced_gpus, which would otherwise turn on, is not needed)
        with gathered(self.policy) as sharded:
            return self.sampler.sample(self.policy, prompts, repeats, log_probs=old_log_probs, synced_gpus=False if sharded else None)

    def completions(self, batch: TensorDict) -> list[str]:
        return self.sampler.decode(batch)

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
        advantage = self.advantage(
            rewards=rewards.view(B, G),
            problems=repeated,
            completions=texts,
            response_tokens=batch["response_tokens"].cpu(),
            response_mask=batch["response_mask"].cpu(),
            tokenizer=self.tokenizer,
        )
        advantage = torch.as_tensor(advantage, dtype=torch.float32)
        require(
            advantage.shape in ((B, G), (B, G, T)),
            f"algo.advantage returned shape {tuple(advantage.shape)}; expected [B, G] = {[B, G]} or [B, G, T] = {[B, G, T]}.",
        )
        advantage = advantage.reshape(B * G, -1).expand(-1, T) * batch["response_mask"].cpu()  # [N, T]
        batch["advantage"] = advantage.unsqueeze(-1).contiguous().to(batch.device)  # [N, T, 1]
        batch["prompt_group"] = torch.arange(B, device=batch.device).repeat_interleave(G)  # each prompt runs once
        # a group whose advantages are all zero carries no policy gradient (all-equal rewards)
        informative = advantage.view(B, G * T).abs().amax(-1) > 0  # [B]
        batch["informative"] = informative.repeat_interleave(G).to(batch.device)  # [N]
        response_tokens = batch["response_mask"].sum().cpu()
        self.accumulate_iteration(
            {
                "reward": rewards.mean(),
                **{f"reward/{name}": value.mean() for name, value in terms.items()},
                "accuracy": (terms[self.accuracy_reward] >= 1.0).float().mean(),
                "completion_length": response_tokens / batch.shape[0],
                "groups_informative": informative.float().mean(),
            }
        )
        self._perf = {"perf/generate_s": generate_s, "perf/generated_tokens_per_s": float(response_tokens) / max(generate_s, 1e-9)}
        if self.has_reference and batch.shape[0]:
            batch["ref_log_probs"] = self.ref_log_probs(batch)
        return batch

    def update(self, batch: TensorDict) -> None:
        start = time.perf_counter()
        self.measured_kl = None  # no update, no measurement: AdaptiveKL then leaves beta alone
        n = batch.shape[0]
        size = self.minibatch_size or max(n, 1)
        self.policy.train()  # LoRA dropout and gradient checkpointing act in training mode only
        try:
            for _ in range(self.num_iterations if n else 0):
                order = torch.randperm(n, device=batch.device) if size < n else torch.arange(n, device=batch.device)
                for first in range(0, n, size):
                    self._minibatch_step(batch[order[first : first + size]])
        finally:
            self.policy.eval()
        if self.has_reference and "kl_to_ref" in self._metric_sums:
            self.measured_kl = float(self.iteration_mean("kl_to_ref"))  # this rank's; AdaptiveKL averages ranks
        self._perf["perf/update_s"] = time.perf_counter() - start

    def _minibatch_step(self, minibatch: TensorDict) -> None:
        """One optimizer step on ``minibatch``: its micro-batches' losses, each weighted by its
        share of the minibatch (response tokens for ``token_mean``, completions for
        ``sequence_mean``), are backpropagated one after the other, so the accumulated gradient
        is the whole minibatch's."""
        per_token = self.aggregation == "token_mean"
        total = float(minibatch["response_mask"].sum()) if per_token else float(minibatch.shape[0])
        if self._skips_uninformative_rows():
            minibatch = minibatch[minibatch["informative"]]  # their loss terms are exactly 0
        # rows of a prompt group adjacent, so each micro-batch runs its shared prompts once
        minibatch = minibatch[torch.argsort(minibatch["prompt_group"], stable=True)]
        micro_size = self.micro_batch_size or max(minibatch.shape[0], 1)
        micros = [self._trim(minibatch[i : i + micro_size]) for i in range(0, minibatch.shape[0], micro_size)]
        self.optimizers().zero_grad()
        sums: dict[str, torch.Tensor] = {}
        for micro in micros:
            share = (float(micro["response_mask"].sum()) if per_token else float(micro.shape[0])) / max(total, 1.0)
            out = self.loss_module(micro)
            loss = self.total_loss(out) * share
            self.backward_only(loss)
            parts = {"loss_objective": out.loss_objective.detach().reshape(()), "clip_fraction": out.clip_fraction,
                     "approx_kl": out.kl_approx, "ESS": out.ESS}  # fmt: skip
            if out.kl_to_ref is not None:
                parts["kl_to_ref"] = out.kl_to_ref
            if out.entropy is not None:
                parts["entropy"] = out.entropy
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + share * value.detach().float().reshape(())
        if not micros:  # every row skipped: the step of an all-zero gradient, as with every row run
            for p in self._trained_params:
                p.grad = torch.zeros_like(p)
        grad_norm = self.optimizer_step(None, self.max_grad_norm)
        if grad_norm is not None:
            sums["grad_norm"] = grad_norm
        self.accumulate(sums)

    def _skips_uninformative_rows(self) -> bool:
        """Whether rows of all-zero-advantage groups may skip the update exactly: they then carry
        no gradient (no KL or entropy term), and on one process (under DDP every rank must run
        the same backward passes)."""
        return self.drop_uniform_groups and not self.has_reference and self.entropy_coeff == 0 and self.world_size == 1

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
    def budget(self) -> tuple[float, float]:
        return float(self.iteration), float(self.total_iterations)

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
        self.log_x_axis()
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
        if not self.val_history[:-1]:  # the "before" row is logged by hand (outside validation), x-axis value too
            before = {k: v for k, v in row.items() if k.startswith("val/") or k == self.x_axis}
            for logger in self.loggers:
                logger.log_metrics(before, step=self.trainer.global_step)
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
        """The trained policy and tokenizer: a transformers directory (``model.path=`` loads it),
        or with LoRA a PEFT adapter directory (plus ``merged/`` with ``model.save_merged``).
        Every rank must call it when the policy is sharded (the weights are gathered onto rank 0,
        which writes); otherwise only rank 0 writes."""
        if not is_sharded(self.policy):
            if self._trainer is None or self.trainer.is_global_zero:
                self.model_factory.save(self.policy, path)
            return
        state = full_state_dict(self.policy)
        if self.trainer.is_global_zero:
            # an unsharded twin of the policy, loaded with the gathered weights, is what is saved
            twin = self.model_factory.build(seed=self.seed)
            missing, _ = twin.load_state_dict(state, strict=False)  # the reference adapter's keys are dropped
            require(not missing, f"gathered policy state lacks {missing[:3]}")
            self.model_factory.save(twin, path)
        self.trainer.strategy.barrier("save_policy")

    # ------------------------------------------------------------------ checkpoints
    algorithm = "GRPO"  # summary.json's algo, checked on resume

    def env_name(self) -> str:
        return self.task.name

    def checkpoint_state(self) -> dict[str, Any]:
        per_rank = self.gather_per_rank({"rng": rng_state(), "prompt_rng": self._prompt_rng.getstate()})
        return {**super().checkpoint_state(), "per_rank": per_rank, "kl_coef": self._kl_coef, "last_samples": self.last_samples}

    def load_checkpoint_state(self, saved: dict[str, Any]) -> None:
        super().load_checkpoint_state(saved)
        self.last_samples = saved.get("last_samples", [])
        if self.has_reference:
            self.kl_coef = saved["kl_coef"]  # a float on the module and its loss, not in state_dict
        state = self.own_rank_state(saved["per_rank"])
        if state is not None:
            self._prompt_rng.setstate(state["prompt_rng"])
            self._pending_rng = state["rng"]

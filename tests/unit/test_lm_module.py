"""LMModule (GRPO by default) on a very small LM: sampling log-probs, masks, one real update, the
micro-batched step, uniform groups, custom advantages and the batch plan."""

import random
import re

import pytest
import torch
from lightning import Trainer
from rewards_for_tests import length_reward

from plmods.algos.lm import LMModule
from plmods.envs.text import AdditionTask, CountdownTask, solve_countdown
from plmods.errors import ConfigError
from plmods.models.lm import TinyCausalLM
from plmods.rollout.group_advantage import ProcessAdvantage
from plmods.rollout.token_offsets import steps_to_tokens, token_char_ends

SMALL = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def _module(builder: str = "grpo", **kwargs) -> LMModule:
    defaults = dict(
        env=AdditionTask(),
        model=TinyCausalLM(**SMALL),
        rewards={"length": length_reward},
        prompts_per_batch=4,
        group_size=4,
        eval_problems=8,
        eval_batch_size=8,
        total_iterations=1,
        lr=1e-3,
    )
    defaults.update(kwargs)
    module = getattr(LMModule, builder)(**defaults)
    module.configure_model()  # a Trainer calls it; these tests also use the module without one
    return module


def _fit(module: LMModule) -> Trainer:
    trainer = Trainer(
        max_epochs=module.total_iterations, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module)
    return trainer


def test_sampler_log_probs_match_a_full_forward_with_left_padding():
    module = _module()
    torch.manual_seed(0)
    batch = module.rollout.generate(module.policy, ["1+2=", "33+44=", "5+66="], repeats=2, old_log_probs=True)
    assert (batch["attention_mask"][:, 0] == 0).any()  # some prompts are left-padded
    full = module.loss_module.actor_network.log_probs(batch)
    torch.testing.assert_close(batch["old_log_probs"], full, rtol=0, atol=1e-5)


def test_response_mask_ends_at_the_first_eos():
    module = _module()
    eos, pad = module.tokenizer.eos_token_id, module.tokenizer.pad_token_id
    responses = torch.tensor([[8, 9, eos, 10], [11, 12, 13, 14]])  # a fixed "sample"

    def fake_generate(input_ids, **_):
        return type("Out", (), {"sequences": torch.cat([input_ids, responses], -1)})()

    module.policy.generate = fake_generate
    batch = module.rollout.generate(module.policy, ["a"], repeats=2)
    assert batch["response_mask"].tolist() == [[True, True, True, False], [True, True, True, True]]
    assert batch["response_tokens"][0].tolist() == [8, 9, eos, pad]


def test_every_trainable_parameter_changes_after_one_iteration():
    module = _module()
    before = {name: p.detach().clone() for name, p in module.policy.named_parameters()}
    _fit(module)
    assert module.trainer.global_step == module.epochs  # mu optimizer steps
    for name, p in module.policy.named_parameters():
        assert not torch.equal(p, before[name]), f"{name} did not change"


def test_beta_zero_builds_no_reference_and_beta_positive_freezes_one():
    assert _module(kl_coef=0.0).ref_policy is None
    module = _module(kl_coef=0.1)
    assert all(not p.requires_grad for p in module.ref_policy.parameters())
    optimized = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    assert module.reference.kind == "copy" and float(module.loss_module.kl_coef) == pytest.approx(0.1)
    assert optimized == {id(p) for p in module.policy.parameters()}
    before = [p.clone() for p in module.ref_policy.parameters()]
    _fit(module)
    assert all(torch.equal(a, b) for a, b in zip(before, module.ref_policy.parameters(), strict=True))
    assert module.measured_kl is not None and module.measured_kl > 0  # the policy moved off the reference


def test_uniform_groups_are_marked_and_their_step_is_the_zero_gradient_step(tmp_path):
    """No group kept: the optimizer steps still happen (zero gradient) and last.ckpt is written."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    module = _module(rewards={"zero": lambda prompts, completions, **_: [0.0] * len(completions)})
    batch = module.make_batch()
    assert batch.shape[0] == 16 and not batch["informative"].any()
    assert float(module._iteration_metrics["groups_informative"]) == 0.0
    before = [p.clone() for p in module.policy.parameters()]
    trainer = Trainer(
        max_epochs=module.total_iterations, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, filename="last", save_on_train_epoch_end=True)],
    )  # fmt: skip
    trainer.fit(module)
    assert trainer.global_step == module.epochs * module.total_iterations
    assert all(torch.equal(a, b) for a, b in zip(before, module.policy.parameters(), strict=True))
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["plmods"]["iteration"] == module.total_iterations and saved["global_step"] == trainer.global_step


def test_process_advantages_follow_step_ends():
    module = _module(
        env=CountdownTask(), rewards={"correct": "plmods.rewards.countdown_answer"},
        advantage=ProcessAdvantage(step_rewards="plmods.rewards.countdown_steps"), drop_uniform_groups=False,
    )  # fmt: skip
    batch = module.make_batch()
    adv = batch["advantage"].squeeze(-1)  # [N, T]
    assert adv.shape == batch["response_tokens"].shape
    # after a completion's last step the advantage is 0 (nothing at or after those tokens)
    assert torch.all(adv[~batch["response_mask"]] == 0)


def test_reinforce_with_step_rewards_runs_in_the_module():
    from plmods.rollout.token_returns import TokenMonteCarloAdvantage

    module = _module(
        env=CountdownTask(), rewards={"correct": "plmods.rewards.countdown_answer"},
        advantage=TokenMonteCarloAdvantage("none", step_rewards="plmods.rewards.countdown_steps"), drop_uniform_groups=False,
    )  # fmt: skip
    batch = module.make_batch()
    adv = batch["advantage"].squeeze(-1)  # [N, T]
    assert adv.shape == batch["response_tokens"].shape and torch.all(adv[~batch["response_mask"]] == 0)


def test_steps_map_characters_to_tokens():
    module = _module()
    tokens = module.tokenizer("7*3=21\n21+5=26", add_special_tokens=False)["input_ids"] + [module.tokenizer.eos_token_id]
    ends = token_char_ends(module.tokenizer, tokens)
    assert ends == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 14]  # eos adds no text
    assert steps_to_tokens([(6, 1.0), (14, 2.0)], ends) == [(5, 1.0), (13, 2.0)]


def test_evaluation_is_reproducible_and_leaves_the_rng_alone():
    module = _module()
    state = torch.get_rng_state()
    first, second = module.evaluate(), module.evaluate()
    assert torch.equal(state, torch.get_rng_state())
    assert [s["completion"] for s in first["samples"]] == [s["completion"] for s in second["samples"]]


def test_heldout_problems_are_never_drawn_for_training():
    task = AdditionTask(digits=1)
    heldout = task.heldout(20, seed=1)
    task.exclude(heldout)
    drawn = {p["prompt"] for p in task.sample(2000, random.Random(0))}
    assert drawn and not drawn & {p["prompt"] for p in heldout}


def test_countdown_demonstrations_solve_the_problems():
    task = CountdownTask()
    rng = random.Random(0)
    from plmods.rewards import countdown_answer

    problems = [task.draw(rng) for _ in range(50)]
    demos = [task.demonstration(p) for p in problems]
    solved = [p for p, d in zip(problems, demos, strict=True) if d]
    assert len(solved) >= 45
    rewards = countdown_answer(
        None, [task.demonstration(p) for p in solved], numbers=[p["numbers"] for p in solved],
        target=[p["target"] for p in solved],
    )  # fmt: skip
    assert rewards == [1.0] * len(solved)
    assert solve_countdown([2, 3], 7) is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(group_size=1), "group_size must be >= 2"),
        (dict(aggregation="sum"), "aggregation must be one of token_mean, sequence_mean"),
        (dict(accuracy_reward="nope"), "accuracy_reward='nope' is not one of rewards"),
        (dict(clip_epsilon=1.5), "clip_epsilon must be in"),
        (dict(kl_coef=-1.0), "loss.kl_coef must be >= 0"),
        (dict(micro_batch_tokens=0), "micro_batch_tokens must be >= 1"),
        (dict(logits_chunk_size=0), "logits_chunk_size must be >= 1"),
        (dict(epochs=0), "epochs must be >= 1"),
    ],
)
def test_bad_settings_name_the_setting(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _module(**kwargs)


def test_parts_must_fit_together():
    from functools import partial

    from plmods.algos.grpo_loss import MaskedGRPOLoss
    from plmods.algos.ppo_lm import MaskedPPOLoss
    from plmods.models.critic import ValueHead
    from plmods.rollout.token_gae import TokenGAE

    with pytest.raises(ConfigError, match="advantage must be an advantage object \\(callable\\), got str"):
        LMModule(AdditionTask(), TinyCausalLM(**SMALL), advantage="process")
    with pytest.raises(ConfigError, match="needs a critic: set critic"):
        LMModule(AdditionTask(), TinyCausalLM(**SMALL), loss=partial(MaskedPPOLoss), advantage=TokenGAE())
    with pytest.raises(ConfigError, match="has no critic: set critic to null"):
        LMModule(AdditionTask(), TinyCausalLM(**SMALL), loss=partial(MaskedGRPOLoss), critic=ValueHead())
    with pytest.raises(ConfigError, match="TokenGAE needs a critic's values"):
        LMModule(AdditionTask(), TinyCausalLM(**SMALL), advantage=TokenGAE())


def test_kl_coef_cannot_be_adapted_without_reference():
    module = _module(kl_coef=0.0)
    with pytest.raises(ConfigError, match="has no KL coefficient to set"):
        module.kl_coef = 0.1
    assert module.kl_coef is None


def test_shared_prompt_forward_equals_the_plain_forward_in_value_and_gradient():
    module = _module(model=TinyCausalLM(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))
    torch.manual_seed(0)
    batch = module.rollout.generate(module.policy, ["1+2=", "33+44=", "5+66="], repeats=3)
    batch = batch[torch.randperm(9)]  # groups need not be contiguous (minibatches shuffle rows)
    # the group id of each row: rows with the same (padded) prompt tokens share a prompt
    prompt_len = batch["input_ids"].shape[1] - batch["response_tokens"].shape[1]
    _, group = torch.unique(batch["input_ids"][:, :prompt_len], dim=0, return_inverse=True)
    scorer, tokens = module.loss_module.actor_network, batch["response_tokens"]
    results = []
    for prompt_group in (None, group):
        module.policy.zero_grad()
        log_probs = scorer(batch["input_ids"], batch["attention_mask"], tokens, batch["response_mask"], prompt_group).log_probs
        log_probs.sum().backward()
        results.append((log_probs.detach(), torch.cat([p.grad.flatten() for p in module.policy.parameters()])))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-5)


def test_adaptive_kl_without_a_reference_is_rejected_before_training():
    from plmods.callbacks import AdaptiveKL

    module = _module(kl_coef=0.0)
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, callbacks=[AdaptiveKL()])
    with pytest.raises(ConfigError, match=r"GRPO has none: use a loss with a KL penalty"):
        trainer.fit(module)


def test_groups_with_equal_float_rewards_are_uninformative():
    """All rewards 0.1: a std > 0 test on floats kept them (the float mean need not be 0.1)."""
    module = _module(rewards={"tenth": lambda prompts, completions, **_: [0.1] * len(completions)})
    batch = module.make_batch()
    assert not batch["informative"].any() and torch.equal(batch["advantage"], torch.zeros_like(batch["advantage"]))


def test_groups_are_kept_when_their_process_advantages_are_not_zero():
    """Outcome rewards all equal, step rewards differing: the advantages used are non-zero, so
    the group trains (the old rule looked at the outcome std and dropped it)."""

    def steps(prompts, completions, **_):
        return [[(1, float(i % 2))] for i in range(len(completions))]

    module = _module(
        rewards={"zero": lambda prompts, completions, **_: [0.0] * len(completions)},
        advantage=ProcessAdvantage(step_rewards=steps),
    )
    batch = module.make_batch()
    assert batch["informative"].all() and batch["advantage"].abs().sum() > 0


def test_a_custom_advantage_callable_is_used_and_its_shape_checked():
    seen = {}

    def constant(*, rewards, **context):
        seen.update(context, rewards=rewards)
        return torch.ones_like(rewards) * 2.0

    batch = _module(advantage=constant).make_batch()
    assert set(seen) >= {"rewards", "problems", "completions", "response_tokens", "response_mask", "tokenizer", "batch"}
    assert torch.equal(batch["advantage"].squeeze(-1), 2.0 * batch["response_mask"].float())
    with pytest.raises(ConfigError, match=r"advantage returned shape \(3,\)"):
        _module(advantage=lambda **_: torch.zeros(3)).make_batch()


@pytest.mark.parametrize(
    "values, message",
    [
        ([float("nan")] * 16, "returned nan for completion 0; rewards must be finite floats"),
        ([1.0] * 15 + [float("inf")], "returned inf for completion 15"),
        ([None] * 16, "returned None for completion 0"),
        ([1.0] * 3, "returned 3 values for 16 completions"),
        (1.0, "returned float, not one float per completion"),
    ],
)
def test_a_bad_reward_stops_the_round_naming_the_function(values, message):
    def broken(prompts, completions, **_):
        return values

    module = _module(rewards={"broken": broken})
    with pytest.raises(ConfigError, match=re.escape("reward function algo.rewards.broken (")) as info:
        module.make_batch()
    assert message in str(info.value) and "broken" in str(info.value)


def _update_gradient(module):
    """The gradient of the first optimizer step of ``module.update`` on a fresh round, and the
    number of completions the loss forward ran."""
    torch.manual_seed(0)
    batch = module.make_batch()
    captured, rows = {}, []
    forward = module.loss_module.forward

    def counting(td, forward=forward):
        rows.append(td.shape[0])
        return forward(td)

    module.loss_module.forward = counting

    def capture(loss, max_grad_norm):
        captured.setdefault("grad", torch.cat([p.grad.flatten() for p in module.policy.parameters()]))

    module._plain_backward = True
    module._trained_params = list(module.policy.parameters())
    module.optimizers = lambda: module.configure_optimizers()
    module.optimizer_step = capture
    module.update(batch)
    return captured["grad"], sum(rows)


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
def test_skipping_zero_advantage_groups_leaves_the_gradient_unchanged(aggregation):
    """drop_uniform_groups is a speed-up, not a different objective: the loss is still normalised
    by every token (completion) of the minibatch, so the step equals the one with every row."""

    def half_zero(*, rewards, **_):
        adv = torch.linspace(-1, 1, rewards.numel()).view_as(rewards)
        adv[:2] = 0.0  # two of the four groups carry nothing
        return adv

    results = {}
    for drop in (False, True):
        results[drop] = _update_gradient(_module(advantage=half_zero, drop_uniform_groups=drop, aggregation=aggregation, epochs=1))
    assert results[False][1] == 16 and results[True][1] == 8  # half the completions ran
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-5, atol=1e-7)


def test_zero_advantage_groups_run_when_they_carry_a_kl_gradient():
    def half_zero(*, rewards, **_):
        adv = torch.linspace(-1, 1, rewards.numel()).view_as(rewards)
        adv[:2] = 0.0
        return adv

    assert _update_gradient(_module(advantage=half_zero, kl_coef=0.1, epochs=1))[1] == 16


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "sequence_sum"])
def test_micro_batches_accumulate_the_same_gradient_as_one_batch(aggregation):
    grads = []
    for micro in (None, 3):
        module = _module(micro_batch_size=micro, aggregation=aggregation, kl_coef=0.1, epochs=1)
        torch.manual_seed(0)
        batch = module.make_batch()
        captured = {}

        def capture(loss, max_grad_norm, module=module, captured=captured):
            if loss is not None:
                module.backward_only(loss)
            captured["grad"] = torch.cat([p.grad.flatten() for p in module.policy.parameters()])

        module._plain_backward = True
        module.optimizers = lambda module=module: module.configure_optimizers()
        module.optimizer_step = capture
        module.update(batch)
        grads.append(captured["grad"])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_batch_plan_counts_one_round_per_rank_and_over_ranks():
    module = _module(minibatch_size=8, micro_batch_size=3, epochs=2, total_iterations=5)
    plan = module.batch_plan(world_size=2)
    assert plan.as_dict() == {
        "prompts (B)": ["4", "8"],
        "completions (B x G)": ["16", "32"],
        "completions per optimizer step": ["8", "16"],
        "optimizer steps (epochs x minibatches)": ["4", "4"],  # 2 passes x 16 / 8, the same on every rank
        "completions per micro-batch": ["3", "3"],  # 3 + 3 + 2
        "iterations": ["5", "5"],
    }
    assert _module(micro_batch_tokens=512).batch_plan().as_dict()["completions per micro-batch"] == ["up to 512 tokens"] * 2
    assert "the same 8 problems on every rank" in plan.table()
    with pytest.raises(ConfigError, match=r"minibatch_size=6 must divide .* = 4 x 4 = 16"):
        _module(minibatch_size=6)

"""LoRA policies through PEFT: the reference is the same network with a frozen adapter (equal to
adapters off at the start), RefPolicySync moves adapter weights only, the saved policy loads."""

import pytest
import torch
from lightning import Trainer
from lm_fixtures import llama_dir
from peft import PeftModel
from rewards_for_tests import length_reward
from transformers import AutoModelForCausalLM

from plmods.algos.lm import LMModule
from plmods.algos.micro_batches import trim
from plmods.callbacks import RefPolicySync
from plmods.envs.text import AdditionTask
from plmods.models.hf import HFCausalLM

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "dropout": 0.0}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return llama_dir(tmp_path_factory.mktemp("llama"))


def _module(model_dir, **kwargs):
    defaults = dict(
        env=AdditionTask(digits=1), model=HFCausalLM(str(model_dir), lora=LORA), rewards={"length": length_reward},
        prompts_per_batch=2, group_size=3, max_new_tokens=6, eval_problems=4, eval_batch_size=4,
        total_iterations=2, lr=1e-2, kl_coef=0.1,
    )  # fmt: skip
    defaults.update(kwargs)
    module = LMModule.grpo(**defaults)
    module.configure_model()
    return module


def _fit(module, callbacks=()):
    trainer = Trainer(
        max_epochs=module.total_iterations, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=list(callbacks),
    )  # fmt: skip
    trainer.fit(module)


def test_only_the_policy_adapter_trains_and_no_second_model_exists(model_dir):
    module = _module(model_dir)
    assert module.ref_policy is None and module.reference.kind == "adapter"  # no copy of the network
    trained = {n for n, p in module.policy.named_parameters() if p.requires_grad}
    assert trained and all(".default." in n and "lora_" in n for n in trained)
    optimized = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    assert optimized == {id(p) for n, p in module.policy.named_parameters() if n in trained}


def test_reference_equals_the_adapters_off_output_and_stays_frozen(model_dir):
    module = _module(model_dir)
    torch.manual_seed(0)
    batch = module.rollout.generate(module.policy, ["1+2=", "3+4="], repeats=2, old_log_probs=True)
    batch["prompt_group"] = torch.arange(2).repeat_interleave(2)
    scorer = module.loss_module.actor_network
    with torch.no_grad(), module.policy.disable_adapter():
        base = scorer.log_probs(batch)
    scorer_ref = module.reference.log_probs(scorer, batch, None)
    torch.testing.assert_close(scorer_ref, base, rtol=0, atol=1e-6)
    _fit(module)
    # the policy moved, the reference did not (still the base model)
    with torch.no_grad():
        moved = scorer.log_probs(batch)
    assert (moved - base).abs().max() > 1e-3
    torch.testing.assert_close(module.reference.log_probs(scorer, batch, None), base, rtol=0, atol=1e-6)
    assert all(p.requires_grad == (".default." in n) for n, p in module.policy.named_parameters() if "lora_" in n)


def test_ref_policy_sync_acts_on_adapter_weights(model_dir):
    module = _module(model_dir)
    base_weights = {n: p.clone() for n, p in module.policy.named_parameters() if "lora_" not in n}
    _fit(module, [RefPolicySync(sync_every=1, alpha=1.0)])
    params = dict(module.policy.named_parameters())
    for name, p in params.items():
        if ".ref." in name:
            assert torch.equal(p, params[name.replace(".ref.", ".default.")]), name
        elif "lora_" not in name:
            assert torch.equal(p, base_weights[name]), name  # the base never moves
    # soft mix: ref <- 0.5 policy + 0.5 ref
    ref = {n: p.clone() for n, p in params.items() if ".ref." in n}
    with torch.no_grad():
        for n, p in params.items():
            if ".default." in n and "lora_B" in n:
                p.add_(1.0)
    module.sync_reference(0.5)
    for n, before in ref.items():
        expected = 0.5 * params[n.replace(".ref.", ".default.")] + 0.5 * before
        torch.testing.assert_close(params[n], expected, rtol=0, atol=1e-6)


def test_saved_policy_is_an_adapter_directory_and_optionally_merged(model_dir, tmp_path):
    module = _module(model_dir, model=HFCausalLM(str(model_dir), lora=LORA, save_merged=True))
    _fit(module)
    module.save_policy(str(tmp_path / "policy"))
    assert (tmp_path / "policy" / "adapter_config.json").is_file()
    assert not (tmp_path / "policy" / "ref").exists()  # only the policy's adapter
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = module.policy(input_ids=ids).logits
        adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), tmp_path / "policy").eval()
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "policy" / "merged").eval()
        torch.testing.assert_close(adapter(input_ids=ids).logits, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=0, atol=1e-4)


def test_adaptive_kl_steers_beta_with_lora(model_dir):
    from plmods.callbacks import AdaptiveKL

    module = _module(model_dir, total_iterations=3)
    callback = AdaptiveKL(target_kl=1e-9, rule="ppo")  # any measured KL is far above: beta doubles
    _fit(module, [callback])
    assert callback.num_updates == 3 and module.kl_coef == pytest.approx(0.8)
    assert module.loss_module.kl_to_ref_coeff == pytest.approx(0.8) and float(module.loss_module.kl_coef) == pytest.approx(0.8)


def test_gradient_checkpointing_gives_the_plain_gradient(model_dir):
    """Checkpointing recomputes activations (the shared-prompt cache is off then): the same
    loss gradient as without it."""
    grads = []
    for checkpointing in (False, True):
        module = _module(model_dir, model=HFCausalLM(str(model_dir), gradient_checkpointing=checkpointing), kl_coef=0.0)
        assert module.loss_module.actor_network.share_prompts is not checkpointing
        torch.manual_seed(0)
        batch = module.make_batch()
        module.policy.train()
        loss = module.total_loss(module.loss_module(trim(batch)))
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in module.policy.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_bfloat16_policy_builds_and_samples(model_dir):
    module = _module(model_dir, model=HFCausalLM(str(model_dir), dtype="bfloat16"), kl_coef=0.0)
    assert next(module.policy.parameters()).dtype == torch.bfloat16
    batch = module.rollout.generate(module.policy, ["1+2="], repeats=2, old_log_probs=True)
    assert batch["old_log_probs"].dtype == torch.float32 and torch.isfinite(batch["old_log_probs"]).all()

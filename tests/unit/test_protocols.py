"""Every plmods module speaks the declared protocols (plmods.protocols) with the same behaviour,
and the 0.1 names keep working for one release with a deprecation warning."""

import warnings

import pytest
import torch
from rewards_for_tests import length_reward

from plmods.algos import ControlModule
from plmods.algos.lm import LMModule
from plmods.envs import AdditionTask, ControlEnv
from plmods.errors import ConfigError
from plmods.models.lm import TinyCausalLM
from plmods.protocols import (
    ControlPolicy,
    Evaluated,
    HasBudget,
    HasReference,
    KLControlled,
    PlmodsModule,
    WarmUpTarget,
)

ENV = ControlEnv("CartPole-v1", num_envs=4)
SMALL = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
LM = dict(rewards={"length": length_reward}, prompts_per_batch=2, group_size=2, eval_problems=4, eval_batch_size=4, total_iterations=2)


def _lm(builder, **kwargs):
    return getattr(LMModule, builder)(AdditionTask(), TinyCausalLM(**SMALL), **LM, **kwargs)


# (module, its beta or None, whether it has a reference policy)
CASES = {
    "ppo": (lambda: ControlModule.ppo(ENV, frames_per_batch=64, minibatch_size=32), None, False),
    "ppo_kl": (lambda: ControlModule.ppo_kl(ENV, kl_coef=0.5, frames_per_batch=64, minibatch_size=32), 0.5, False),
    "reinforce": (lambda: ControlModule.reinforce(ENV, episodes_per_batch=4, frames_per_batch=32), None, False),
    "grpo": (lambda: _lm("grpo"), None, False),
    "grpo_kl": (lambda: _lm("grpo", kl_coef=0.04), 0.04, True),
    "reinforce_lm": (lambda: _lm("reinforce"), None, False),
    "reinforce_lm_kl": (lambda: _lm("reinforce", kl_coef=0.1), 0.1, True),
    "ppo_lm": (lambda: _lm("ppo"), 0.05, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_module_answers_the_protocol_the_same_way(name):
    build, beta, has_reference = CASES[name]
    module = build()
    for protocol in (PlmodsModule, KLControlled, HasReference, HasBudget, Evaluated):
        assert isinstance(module, protocol), protocol.__name__
    assert module.algorithm in ("PPO", "PPO-KL", "REINFORCE", "GRPO")
    assert module.measured_kl is None and module.iteration == 0 and module.val_history == []
    assert module.x_axis in ("frames", "iteration") and module.val_metrics
    spent, total = module.budget()
    assert spent == 0.0 and total > 0
    assert module.batch_plan(2).rows  # a table of one iteration
    assert module.has_reference is has_reference
    # kl_coef: readable before any model exists, None without a KL coefficient
    if beta is None:
        assert module.kl_coef is None
        with pytest.raises(ConfigError, match="has no KL coefficient to set"):
            module.kl_coef = 0.2
    else:
        assert module.kl_coef == pytest.approx(beta)
        module.kl_coef = 0.2
        assert module.kl_coef == pytest.approx(0.2)
    if not has_reference:
        with pytest.raises(ConfigError, match="no reference policy to sync"):
            module.sync_reference(1.0)
    if isinstance(module, LMModule):
        assert isinstance(module, WarmUpTarget) and not module.policy_built
        module.configure_model()
        if beta is not None:  # the value set before the loss existed reaches the loss, its owner
            assert float(module.loss_module.kl_coef) == pytest.approx(0.2) and module.kl_coef == pytest.approx(0.2)
        if has_reference:
            module.sync_reference(1.0)
    else:
        assert isinstance(module, ControlPolicy)


def test_save_policy_writes_the_control_actor_and_critic(tmp_path):
    module = ControlModule.ppo(ENV, frames_per_batch=64, minibatch_size=32)
    module.save_policy(str(tmp_path / "policy"))
    saved = torch.load(tmp_path / "policy" / "actor_critic.pt", weights_only=True)
    assert saved["actor"].keys() == module.actor.state_dict().keys()


# --- 0.1 names ------------------------------------------------------------------------------------


def test_rlmodule_is_controlmodule_with_a_warning():
    import plmods.algos as algos
    from plmods.algos import base

    with pytest.warns(DeprecationWarning, match="RLModule is deprecated"):
        assert algos.RLModule is ControlModule
    with pytest.warns(DeprecationWarning, match="RLModule is deprecated"):
        assert base.RLModule is ControlModule


def test_num_iterations_is_planned_iterations_with_a_warning():
    module = ControlModule.ppo(ENV, frames_per_batch=64, minibatch_size=32, total_frames=640)
    with pytest.warns(DeprecationWarning, match="planned_iterations"):
        assert module.num_iterations() == module.planned_iterations() == 10
    episodes = ControlModule.reinforce(ENV, episodes_per_batch=4, frames_per_batch=32)
    assert episodes.planned_iterations() is None  # episode batches: the budget is frames


def test_grpomodule_builds_the_same_module_as_lmmodule_grpo():
    from plmods.algos import GRPOModule

    with pytest.warns(DeprecationWarning, match="GRPOModule is deprecated"):
        old = GRPOModule(AdditionTask(), TinyCausalLM(**SMALL), num_iterations=3, kl_coef=0.1, clip_epsilon=0.3, **LM)
    new = _lm("grpo", epochs=3, kl_coef=0.1, clip_epsilon=0.3)
    assert isinstance(old, LMModule) and old.algorithm == new.algorithm == "GRPO"
    assert old.num_iterations == old.epochs == new.epochs == 3
    old.configure_model()
    new.configure_model()
    assert float(old.loss_module.clip_epsilon_low) == pytest.approx(0.3) and old.kl_coef == pytest.approx(0.1)
    a, b = old.state_dict(), new.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ppo_kl_loss_takes_kl_coef_and_still_beta_with_a_warning():
    from plmods.algos.ppo_loss import K3KLPENPPOLoss

    module = ControlModule.ppo_kl(ENV, kl_coef=0.7, frames_per_batch=64, minibatch_size=32)
    with pytest.warns(DeprecationWarning, match="beta"):
        loss = K3KLPENPPOLoss(module.actor, module.critic, beta=0.3)
    assert float(loss.beta) == pytest.approx(0.3) and module.kl_coef == pytest.approx(0.7)


def test_renamed_config_paths_still_work_with_one_line_each(capsys):
    from plmods.cli import renamed_overrides

    args = ["algo.num_iterations=3", "+algo.kl_coef=0.1", "algo.loss.beta=2", "algo.epochs=4", "-m", "algo.clip_epsilon=0.1,0.2"]
    assert renamed_overrides(args) == [
        "algo.epochs=3", "+algo.loss.kl_coef=0.1", "algo.loss.kl_coef=2", "algo.epochs=4", "-m", "algo.loss.clip_epsilon=0.1,0.2",
    ]  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "plmods: algo.num_iterations is deprecated (removed in 0.3): use algo.epochs" and len(lines) == 4


def test_no_warning_from_the_new_names():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        ControlModule.ppo_kl(ENV, kl_coef=0.7, frames_per_batch=64, minibatch_size=32)
        _lm("grpo", kl_coef=0.1)

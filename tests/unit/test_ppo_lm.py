"""PPO on language models: the loss with its critic, the critic's two forms, the value head's
save/load round trip, and what a round records for GAE (V_old, returns, explained variance)."""

import pytest
import torch
from scorer_fakes import TableScorer
from tensordict import TensorDict
from torch import nn

from plmods.algos.ppo_lm import MaskedPPOLoss
from plmods.errors import ConfigError
from plmods.models.critic import HEAD_FILE, CriticModel, SharedTrunkCritic, ValueHead, load_value_head


class FixedCritic(nn.Module):
    """V = a parameter table [N, T]."""

    shares_trunk = False

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(values)

    def values(self, batch, policy_hidden=None):
        return self.table


def _batch():
    mask = torch.tensor([[True, True, True], [True, False, False]])
    return TensorDict(
        input_ids=torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 5, dtype=torch.long),
        response_tokens=torch.zeros(2, 3, dtype=torch.long), response_mask=mask, old_log_probs=torch.full((2, 3), -0.6931472),
        advantage=torch.ones(2, 3, 1), old_values=torch.full((2, 3), 0.5), value_target=torch.tensor([[0.0, 1.0, 0.6], [2.0, 0.0, 0.0]]),
        batch_size=[2],
    )  # fmt: skip


def test_the_critic_term_is_critic_coeff_times_the_token_mean_of_the_clipped_value_loss():
    critic = FixedCritic(torch.tensor([[1.0, 0.9, 0.5], [0.5, 7.0, 7.0]]))  # masked values must not count
    loss = MaskedPPOLoss(TableScorer(torch.zeros(2, 3, 2)), critic, critic_coeff=0.1, clip_value=0.2, kl_coef=0.0)
    out = loss(_batch())
    # per valid token: [0.5, 0.045, 0.005] (test_lm_advantages) and row 1: V = V_old = 0.5, R = 2: 0.5 * 1.5^2
    per_token = [0.5, 0.045, 0.005, 0.5 * 1.5**2]
    assert float(out.loss_critic) == pytest.approx(0.1 * sum(per_token) / 4, abs=1e-7)
    assert float(out.value_clip_fraction) == pytest.approx(1 / 4)
    # the policy term is the clipped surrogate as in MaskedGRPOLoss: ratio 1, A = 1 -> -1
    assert float(out.loss_objective) == pytest.approx(-1.0, abs=1e-6)
    out.loss_critic.backward()
    assert critic.table.grad[1, 1:].abs().sum() == 0  # padding gets no gradient


def test_value_head_save_and_load_round_trip(tmp_path):
    head = nn.Linear(8, 1)
    critic = SharedTrunkCritic(head)
    critic.save(tmp_path)
    assert (tmp_path / HEAD_FILE).is_file()
    loaded = load_value_head(tmp_path)
    assert torch.equal(loaded.weight, head.weight) and torch.equal(loaded.bias, head.bias)
    policy = type("P", (nn.Module,), {})()
    policy.config = type("C", (), {"hidden_size": 8})()
    rebuilt = ValueHead(path=str(tmp_path)).build(policy, None, 0, None)
    hidden = torch.randn(2, 3, 8)
    torch.testing.assert_close(rebuilt.values(None, hidden), head(hidden).squeeze(-1), rtol=0, atol=0)


def test_a_new_value_head_starts_at_zero_and_a_wrong_width_is_named(tmp_path):
    policy = type("P", (nn.Module,), {})()
    policy.config = type("C", (), {"hidden_size": 4})()
    critic = ValueHead().build(policy, None, 0, None)
    assert critic.values(None, torch.randn(1, 2, 4)).abs().sum() == 0
    SharedTrunkCritic(nn.Linear(6, 1)).save(tmp_path)
    with pytest.raises(ConfigError, match="holds a value head for width 6, the policy's is 4"):
        ValueHead(path=str(tmp_path)).build(policy, None, 0, None)
    with pytest.raises(ConfigError, match=f"holds no {HEAD_FILE}"):
        ValueHead(path=str(tmp_path / "nothing"))


def test_a_separate_critic_needs_the_policys_vocabulary(tmp_path):
    from lm_fixtures import llama_dir

    from plmods.models.hf import HFCausalLM
    from plmods.models.lm import TinyCausalLM

    other = llama_dir(tmp_path / "bpe")  # a 300-token BPE vocabulary, the tiny LM's is ~106
    lm = TinyCausalLM(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    with pytest.raises(ConfigError, match="the critic reads the policy's token ids"):
        CriticModel(path=str(other)).build(lm.build(), lm, 0, None)
    with pytest.raises(ConfigError, match="is not a saved transformers model"):
        CriticModel(path=str(tmp_path / "none"))
    assert HFCausalLM  # (imported for the fixture's tokenizer stack)


@pytest.mark.parametrize("separate", [False, True])
def test_a_round_records_old_values_returns_and_the_explained_variance(separate):
    from rewards_for_tests import length_reward

    from plmods.algos.lm import LMModule
    from plmods.envs.text import AdditionTask
    from plmods.models.lm import TinyCausalLM

    module = LMModule.ppo(
        AdditionTask(), TinyCausalLM(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
        critic=CriticModel() if separate else None, rewards={"length": length_reward}, prompts_per_batch=2, group_size=3,
        eval_problems=4, eval_batch_size=4,
    )  # fmt: skip
    module.configure_model()
    assert module.algorithm == "PPO" and module.critic.shares_trunk is not separate
    with torch.no_grad():
        for p in module.critic.head.parameters():
            p.fill_(0.01)
    batch = module.make_batch()
    mask = batch["response_mask"]
    assert batch["old_values"].shape == mask.shape and (batch["old_values"][~mask] == 0).all()
    assert "kl_reward" in batch.keys() and "ref_log_probs" in batch.keys()  # beta = 0.05 in the reward  # noqa: SIM118 (TensorDict has no __contains__ for keys)
    metrics = module._iteration_metrics
    returns, values = batch["value_target"][mask], batch["old_values"][mask]
    expected = 1 - (returns - values).var() / returns.var()
    assert float(metrics["explained_variance"]) == pytest.approx(float(expected), abs=1e-6)
    names = {n.split(".")[2] for n in module.state_dict() if n.startswith("loss_module.critic_network.")}
    assert names == ({"trunk", "head"} if separate else {"head"})


@pytest.mark.parametrize("separate", [False, True])
def test_the_value_head_learns_at_critic_lr_and_everything_else_at_lr(separate):
    from rewards_for_tests import length_reward

    from plmods.algos.lm import LMModule
    from plmods.envs.text import AdditionTask
    from plmods.models.lm import TinyCausalLM

    module = LMModule.ppo(
        AdditionTask(), TinyCausalLM(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
        critic=CriticModel() if separate else None, rewards={"length": length_reward}, prompts_per_batch=2, group_size=2,
        eval_problems=4, eval_batch_size=4, lr=1e-5, critic_lr=3e-3,
    )  # fmt: skip
    module.configure_model()
    policy_group, head_group = module.configure_optimizers().param_groups
    assert head_group["lr"] == 3e-3 and policy_group["lr"] == 1e-5
    assert {id(p) for p in head_group["params"]} == {id(p) for p in module.critic.head.parameters()}
    trunk = {id(p) for p in module.critic.parameters()} - {id(p) for p in module.critic.head.parameters()}
    assert trunk <= {id(p) for p in policy_group["params"]} and bool(trunk) == separate
    assert len(policy_group["params"]) + 2 == len([p for p in module.loss_module.parameters() if p.requires_grad])


def test_the_documented_defaults_reach_the_loss():
    loss = MaskedPPOLoss(TableScorer(torch.zeros(2, 3, 2)), FixedCritic(torch.zeros(2, 3)))
    assert loss.critic_coeff == 0.1 and loss.entropy_coeff == 0.0
    with pytest.raises(ConfigError, match=r"^clip_value must be > 0 or null, got -1"):
        MaskedPPOLoss(TableScorer(torch.zeros(2, 3, 2)), FixedCritic(torch.zeros(2, 3)), clip_value=-1)
    assert MaskedPPOLoss(TableScorer(torch.zeros(2, 3, 2)), FixedCritic(torch.zeros(2, 3)), clip_value=None).clip_value is None


def test_a_minibatch_without_response_tokens_has_a_zero_clip_fraction():
    batch = _batch()
    batch["response_mask"] = torch.zeros(2, 3, dtype=torch.bool)
    out = MaskedPPOLoss(TableScorer(torch.zeros(2, 3, 2)), FixedCritic(torch.zeros(2, 3)))(batch)
    assert float(out.value_clip_fraction) == 0.0 and out.value_clip_fraction.shape == ()


@pytest.mark.parametrize("separate", [False, True])
def test_the_loss_reads_the_critics_values_of_this_batch(separate):
    """Through a real module: the loss's value term is critic_coeff times the token mean of the
    clipped value loss of the critic's own V(s_t) for the batch (the value head on the policy's
    hidden states of this forward; a separate critic's trunk on this batch)."""
    from rewards_for_tests import length_reward

    from plmods.algos.lm import LMModule
    from plmods.algos.ppo_lm import clipped_value_loss
    from plmods.envs.text import AdditionTask
    from plmods.models.critic import old_values
    from plmods.models.lm import TinyCausalLM

    module = LMModule.ppo(
        AdditionTask(), TinyCausalLM(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
        critic=CriticModel() if separate else None, rewards={"length": length_reward}, prompts_per_batch=2, group_size=3,
        eval_problems=4, eval_batch_size=4, critic_coeff=0.5, clip_value=None,
    )  # fmt: skip
    module.configure_model()
    with torch.no_grad():
        for p in module.critic.head.parameters():
            p.uniform_(-0.5, 0.5)
    batch = module.make_batch()
    loss = module.loss_module
    out = loss(batch)
    values = old_values(module.critic, loss.actor_network, batch, batch.shape[0])  # the same V, computed apart
    mask = batch["response_mask"]
    per_token, _ = clipped_value_loss(values, batch["old_values"], batch["value_target"], None)
    assert float(out.loss_critic) == pytest.approx(0.5 * float(per_token[mask].mean()), rel=1e-5)

"""The two places plmods reaches torchrl internals fail here first when torchrl changes them."""

import torch
from tensordict import TensorDictBase

from plmods.algos import ControlModule
from plmods.envs import ControlEnv
from plmods.rollout.collector import _carrier, collector_state, load_collector_state


def test_collector_carrier_is_the_tensordict_it_steps_from():
    module = ControlModule.ppo(ControlEnv("CartPole-v1", num_envs=4), frames_per_batch=64, minibatch_size=32)
    module.setup("fit")
    collector = module.rollout.collector
    carrier = _carrier(collector)
    assert isinstance(carrier, TensorDictBase) and carrier.batch_size == torch.Size([4])
    state = collector_state(collector)
    batch, _ = module.rollout.collect()
    # the batch started from the carrier's observation, and a reload brings that state back
    torch.testing.assert_close(batch["observation"][:, 0], state["carrier"]["observation"])
    load_collector_state(collector, state)
    torch.testing.assert_close(_carrier(collector)["observation"], state["carrier"]["observation"])
    again, _ = module.rollout.collect()
    torch.testing.assert_close(again["observation"][:, 0], batch["observation"][:, 0])
    module.teardown("fit")


def test_ppo_losses_log_weight_contract():
    # plmods.algos.ppo_loss reads the first item of _log_weight's result as log(pi / pi_old)
    torch.manual_seed(0)
    module = ControlModule.ppo(ControlEnv("CartPole-v1", num_envs=4), frames_per_batch=64, minibatch_size=32)
    module.setup("fit")
    batch = module.rollout.collect()[0].reshape(-1)
    module.advantage_module(batch)
    out = module.loss_module._log_weight(batch, batch["advantage"].shape[:-1])
    assert len(out) == 4
    log_weight = out[0]
    assert log_weight.shape == batch["advantage"].shape
    # the batch was sampled by this very policy: log(pi / pi_old) = 0
    torch.testing.assert_close(log_weight, torch.zeros_like(log_weight), atol=1e-5, rtol=0)
    module.teardown("fit")

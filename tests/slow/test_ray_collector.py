"""WorkerCollector on torchrl's RayCollector, local Ray cluster of 2 CPUs (~15 s: Ray start-up)."""

import pytest
import torch
from torch import nn

from plmods.envs.control import ControlEnv
from plmods.models.control import MLPActorCritic
from plmods.rollout.workers import WorkerCollector

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


def set_head(actor: nn.Module, action: int) -> None:
    """New head parameters that always pick ``action`` (Ray actors hold a copy: only a push helps)."""
    head = [m for m in actor.modules() if isinstance(m, nn.Linear)][-1]
    bias = torch.full_like(head.bias, -50.0)
    bias[action] = 50.0
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(bias)


def test_ray_workers_collect_and_follow_pushed_weights():
    factory = ControlEnv("CartPole-v1", num_envs=4)
    torch.manual_seed(0)
    actor, _ = MLPActorCritic().build(factory.make(num_envs=1))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        collector = WorkerCollector(
            factory, actor, frames_per_batch=64, workers=2, seed=3, backend="ray", auto_push=False
        )
        first, second = collector.next_batch(), collector.next_batch()
        for batch in (first, second):
            assert batch.batch_size == torch.Size([4, 16])
            assert batch["next", "episode_reward"].shape == batch["next", "step_count"].shape == (4, 16, 1)
        # row r is the env seeded seed + r, as in a single-process env
        torch.testing.assert_close(first["observation"][:, 0], factory.make(seed=3).reset()["observation"])
        assert 0 < first["action"].float().mean() < 1
        # an in-place change is invisible to the actors' copies until pushed
        set_head(actor, 1)
        assert not bool((collector.next_batch()["action"] == 1).all())
        collector.update_weights()
        assert bool((collector.next_batch()["action"] == 1).all())
        collector.auto_push = True
        set_head(actor, 0)
        assert bool((collector.next_batch()["action"] == 0).all())
        state = collector.state_dict()
        assert len(state["workers"]) == 2 and "policy_state_dict" not in state["workers"][0]
        collector.load_state_dict(state)
        collector.shutdown()
        assert ray.is_initialized()  # the cluster belongs to whoever started it
    finally:
        ray.shutdown()

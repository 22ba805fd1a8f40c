"""WorkerCollector (torchrl MultiSyncCollector, 2 worker processes): layout, weights, seeds, errors."""

import pytest
import torch
from torch import nn

from plmods.envs.control import ControlEnv
from plmods.errors import ConfigError
from plmods.models.control import MLPActorCritic
from plmods.rollout.collector import make_collector
from plmods.rollout.workers import WorkerCollector

FRAMES = 64  # 4 envs x 16 steps; 2 workers x 2 envs


def build_actor(env_factory: ControlEnv) -> nn.Module:
    torch.manual_seed(0)
    actor, _ = MLPActorCritic().build(env_factory.make(num_envs=1))
    return actor


def force_action(actor: nn.Module, action: int, *, in_place: bool) -> None:
    """Make the policy pick ``action`` always: zero head weights, a large bias for ``action``."""
    head = [m for m in actor.modules() if isinstance(m, nn.Linear)][-1]
    bias = torch.full_like(head.bias, -50.0)
    bias[action] = 50.0
    if in_place:
        with torch.no_grad():
            head.weight.zero_()
            head.bias.copy_(bias)
    else:  # new tensors: what a module swap or a fresh nn.Parameter does
        head.weight = nn.Parameter(torch.zeros_like(head.weight))
        head.bias = nn.Parameter(bias)


@pytest.fixture(scope="module")
def cartpole():
    factory = ControlEnv("CartPole-v1", num_envs=4)
    actor = build_actor(factory)
    with WorkerCollector(factory, actor, frames_per_batch=FRAMES, workers=2, seed=7) as collector:
        yield factory, actor, collector, collector.next_batch()


def test_batch_layout_matches_single_process_collector(cartpole):
    factory, actor, _, batch = cartpole
    single = make_collector(factory.make(seed=7), actor, frames_per_batch=FRAMES)
    reference = next(iter(single))
    single.shutdown()
    assert batch.batch_size == reference.batch_size == torch.Size([4, 16])
    assert set(batch.keys(True, True)) == set(reference.keys(True, True))
    for key in reference.keys(True, True):
        assert batch[key].shape == reference[key].shape and batch[key].dtype == reference[key].dtype, key
    # row r is the env seeded seed + r in both: same first observations
    torch.testing.assert_close(batch["observation"][:, 0], reference["observation"][:, 0])
    assert batch["next", "done"].shape == (4, 16, 1)


def test_workers_are_seeded_apart_and_reproducibly(cartpole):
    factory, actor, _, batch = cartpole
    first = batch["observation"][:, 0]  # rows 0-1: worker 0, rows 2-3: worker 1
    assert len({tuple(row.tolist()) for row in first}) == 4
    with WorkerCollector(factory, actor, frames_per_batch=FRAMES, workers=2, seed=7) as again:
        repeat = again.next_batch()
    # same seed: the same observations and the same sampled actions (each worker seeds its torch RNG)
    torch.testing.assert_close(repeat["observation"], batch["observation"])
    assert torch.equal(repeat["action"], batch["action"])
    # worker 1 does not replay worker 0's action draws
    assert not torch.equal(batch["action"][:2], batch["action"][2:])


def test_collector_state_round_trip(cartpole):
    _, _, collector, _ = cartpole
    state = collector.state_dict()
    assert state["frames"] == FRAMES and "policy_state_dict" not in state["worker0"]
    collector.next_batch()
    collector.load_state_dict(state)
    assert collector.collector.state_dict()["frames"] == FRAMES
    assert collector.next_batch().batch_size == torch.Size([4, 16])


def test_weight_updates_reach_the_workers():
    factory = ControlEnv("CartPole-v1", num_envs=4)
    actor = build_actor(factory)
    with WorkerCollector(
        factory, actor, frames_per_batch=FRAMES, workers=2, seed=0, auto_push=False
    ) as collector:
        first = collector.next_batch()["action"]
        assert 0 < first.float().mean() < 1  # the initial policy is near-uniform
        # the workers run on the policy's own parameters, moved into shared memory:
        # an in-place change (what optimizer.step() does) arrives with no push
        assert all(p.is_shared() for p in actor.parameters())
        force_action(actor, 1, in_place=True)
        assert bool((collector.next_batch()["action"] == 1).all())
        # new parameter tensors are not shared: without a push the workers keep the old weights
        force_action(actor, 0, in_place=False)
        assert bool((collector.next_batch()["action"] == 1).all())
        collector.update_weights()
        assert bool((collector.next_batch()["action"] == 0).all())
        # auto_push (the default) pushes before every batch
        collector.auto_push = True
        force_action(actor, 1, in_place=False)
        assert bool((collector.next_batch()["action"] == 1).all())


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"workers": 3}, "workers=3"),  # 4 envs do not split over 3 workers
        ({"frames_per_batch": 66}, "frames_per_batch=66"),  # not whole steps of 4 envs
        ({"frames_per_batch": 2}, "frames_per_batch=2"),
        ({"workers": 0}, "workers must be >= 1"),
        ({"backend": "thread"}, "backend='thread'"),
    ],
)
def test_bad_settings_raise_config_error(settings, named):
    factory = ControlEnv("CartPole-v1", num_envs=4)
    kwargs = {"frames_per_batch": FRAMES, "workers": 2, "seed": 0, **settings}
    with pytest.raises(ConfigError, match=named) as info:
        WorkerCollector(factory, nn.Identity(), **kwargs)
    if "workers" in settings and settings["workers"] == 3:
        assert "num_envs=4" in str(info.value)


def test_a_resumed_control_module_reseeds_its_workers():
    """The workers' episodes cannot be restored: a resumed module rebuilds its workers with seeds
    of its own, so it does not replay the first segment's episode starts."""
    from plmods.algos import ControlModule

    def started(iteration: int | None):
        module = ControlModule.ppo(ControlEnv("CartPole-v1", num_envs=4, workers=2), frames_per_batch=FRAMES, minibatch_size=32)
        module.setup("fit")
        try:
            if iteration is not None:
                saved = module.checkpoint_state()
                saved["iteration"] = iteration
                module.load_checkpoint_state(saved)
            return module.rollout.collector.next_batch()["observation"][:, 0]
        finally:
            module.teardown("fit")

    fresh, again, resumed = started(None), started(None), started(2)
    assert torch.equal(fresh, again)  # seeded: the same starts for the same segment
    assert not torch.equal(fresh, resumed)

"""DDP with 2 CPU processes (gloo): each rank collects with its own env and seed."""

import pytest
import torch
from conftest import PPO_FAST

pytestmark = pytest.mark.ddp


def test_ddp_two_ranks_collect_separately_and_resume(run_train, tmp_path):
    run = run_train(
        *PPO_FAST,
        "trainer=ddp_sim",
        "logger=none",
        "algo.total_frames=512",
        "trainer.max_epochs=2",
        run_dir=tmp_path / "part",
    )
    s = run.summary
    # frames count both ranks: 2 iterations x 64 frames x 2 ranks
    assert s["frames"] == 256 and s["iterations"] == 2
    ckpt = torch.load(run.run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    per_rank = ckpt["plmods"]["per_rank"]
    assert len(per_rank) == 2
    # different seeds per rank: different running episodes and env states
    assert not torch.equal(per_rank[0]["carrier"]["observation"], per_rank[1]["carrier"]["observation"])
    assert per_rank[0]["env"]["gym_envs"] != per_rank[1]["env"]["gym_envs"]

    resumed = run_train(
        *PPO_FAST,
        "trainer=ddp_sim",
        "logger=none",
        "algo.total_frames=512",
        f"ckpt_path={run.run_dir / 'checkpoints' / 'last.ckpt'}",
        run_dir=tmp_path / "resumed",
    )
    assert resumed.summary["frames"] == 512
    assert resumed.summary["iterations"] == 4


def test_grpo_ddp_ranks_draw_their_own_prompts(run_train, tmp_path):
    run = run_train(
        "experiment=grpo_addition", "debug=fast_lm", "trainer=ddp_sim", "logger=none",
        "+algo.rewards.length=tests.rewards_for_tests.length_reward", f"callbacks.sft_warmup.cache_dir={tmp_path / 'sft'}",
    )  # fmt: skip
    assert run.summary["iterations"] == 4
    ckpt = torch.load(run.run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    per_rank = ckpt["plmods"]["per_rank"]
    assert len(per_rank) == 2 and per_rank[0]["prompt_rng"] != per_rank[1]["prompt_rng"]
    assert ckpt["global_step"] == 4 * 2  # both ranks stepped together: mu = 2 per iteration

"""Every algorithm on 2 CPU processes (gloo) under DDP (`trainer=ddp_sim`) and FSDP2
(`trainer=fsdp_sim`): ranks hold identical models (full-state hash compare by the RankConsistency
callback), draw their own data, count all ranks' frames, and a run whose rank 0 is killed mid-iteration,
resumed under the same strategy, ends exactly where the uninterrupted one does."""

import json

import pytest
import torch
from conftest import LM_FAST as TINY_LM_FAST
from conftest import PPO_FAST

pytestmark = pytest.mark.ddp

CHECK = "+callbacks@callbacks.rank_consistency=rank_consistency"
LM_FAST = (*TINY_LM_FAST, "logger=none")


def _consistency(run) -> dict:
    return json.loads((run.run_dir / "rank_consistency.json").read_text())


def _meta(run) -> dict:
    """The non-tensor part of last.ckpt: the file itself (DDP) or a sharded directory's meta.pt (FSDP)."""
    path = run.run_dir / "checkpoints" / "last.ckpt"
    from plmods.checkpoint import decode

    checkpoint = torch.load(path / "meta.pt" if path.is_dir() else path, weights_only=True)  # plain data only
    checkpoint["plmods"] = decode(checkpoint["plmods"])
    return checkpoint


def _kill_and_resume(run_train, tmp_path, args, kill_at):
    """(uninterrupted run, run resumed from a run whose rank 0 was SIGKILLed in the middle of
    iteration ``kill_at``: after collecting, before its updates)."""
    full = run_train(*args, run_dir=tmp_path / "full")
    kill = f"+callbacks.kill={{_target_: tests.callbacks_for_tests.KillAtIteration, iteration: {kill_at}}}"
    killed = run_train(*args, kill, run_dir=tmp_path / "killed", expect_ok=False)
    assert killed.proc.returncode != 0 and not (killed.run_dir / "summary.json").exists()
    ckpt = killed.run_dir / "checkpoints" / "last.ckpt"
    assert _meta(killed)["plmods"]["iteration"] == kill_at  # the last finished iteration's checkpoint
    resumed = run_train(*args, f"ckpt_path={ckpt}", run_dir=tmp_path / "resumed")
    return full, resumed


def _assert_same_end(full, resumed):
    a, b = _consistency(full), _consistency(resumed)
    assert a["world_size"] == b["world_size"] == 2
    assert (a["global_step"], a["tensors"], a["digest"]) == (b["global_step"], b["tensors"], b["digest"])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(full.summary["val_history"]) == strip(resumed.summary["val_history"])


def test_ppo_ddp_ranks_collect_separately_agree_and_resume_exactly(run_train, tmp_path):
    args = (*PPO_FAST, "trainer=ddp_sim", "logger=none", "algo.total_frames=512", CHECK)
    full, resumed = _kill_and_resume(run_train, tmp_path, args, kill_at=2)
    # frames count both ranks: 4 iterations x 64 frames x 2 ranks
    assert full.summary["frames"] == resumed.summary["frames"] == 512
    assert full.summary["iterations"] == resumed.summary["iterations"] == 4
    per_rank = _meta(full)["plmods"]["per_rank"]
    assert len(per_rank) == 2  # different seeds per rank: different running episodes and env states
    assert not torch.equal(per_rank[0]["carrier"]["observation"], per_rank[1]["carrier"]["observation"])
    assert per_rank[0]["env"]["gym_envs"] != per_rank[1]["env"]["gym_envs"]
    _assert_same_end(full, resumed)


def test_reinforce_ddp_ranks_agree(run_train):
    run = run_train("algo=reinforce", "debug=fast", "trainer=ddp_sim", "logger=none", "algo.total_frames=1000", CHECK)
    assert _consistency(run)["world_size"] == 2 and run.summary["frames"] >= 1000
    per_rank = _meta(run)["plmods"]["per_rank"]
    assert per_rank[0]["env"]["gym_envs"] != per_rank[1]["env"]["gym_envs"]


PPO_KL_FSDP = (*PPO_FAST, "algo=ppo_kl", "trainer=fsdp_sim", "logger=none", "algo.total_frames=512",
               "callbacks=[default,adaptive_kl,rank_consistency]")  # fmt: skip


def _assert_ppo_kl_ran_as_ddp_with_one_beta(run):
    # nothing to shard in an MLP: the preset's ModelParallelStrategy becomes DDP (logged)
    assert run.summary["config"]["trainer"]["strategy"]["_target_"].endswith("DDPStrategy")
    assert "has nothing to shard: trainer.strategy runs as DDP (gloo)" in run.output
    (kl_state,) = [v for k, v in _meta(run)["callbacks"].items() if k.startswith("AdaptiveKL")]
    assert kl_state["num_updates"] == 4  # one adaptation per iteration; beta is in the hashed state
    assert run.summary["frames"] == 512 and _consistency(run)["world_size"] == 2


def test_ppo_kl_under_the_fsdp_preset_runs_as_ddp_and_adapts_one_beta(run_train):
    _assert_ppo_kl_ran_as_ddp_with_one_beta(run_train(*PPO_KL_FSDP))


@pytest.mark.slow  # kill + resume under DDP is in the default suite (PPO above, GRPO under FSDP below)
def test_ppo_kl_under_the_fsdp_preset_resumes_exactly(run_train, tmp_path):
    full, resumed = _kill_and_resume(run_train, tmp_path, PPO_KL_FSDP, kill_at=2)
    _assert_ppo_kl_ran_as_ddp_with_one_beta(full)
    _assert_same_end(full, resumed)


def test_grpo_ddp_ranks_draw_their_own_prompts_and_agree(run_train, tmp_path):
    run = run_train(
        "experiment=grpo_addition", *LM_FAST, "trainer=ddp_sim", "algo.loss.kl_coef=0.05", CHECK,
        f"callbacks.sft_warmup.cache_dir={tmp_path / 'sft'}",
    )  # fmt: skip
    assert run.summary["iterations"] == 4 and _consistency(run)["world_size"] == 2
    meta = _meta(run)
    per_rank = meta["plmods"]["per_rank"]
    assert len(per_rank) == 2 and per_rank[0]["prompt_rng"] != per_rank[1]["prompt_rng"]
    assert meta["global_step"] == 4 * 2  # both ranks stepped together: mu = 2 per iteration


# the LoRA variant (whole-file checkpoint gathered on rank 0) is a slow test: 35 s on 2 cores
@pytest.mark.parametrize("lora", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["full", "lora"])
def test_grpo_fsdp_shards_syncs_the_reference_and_resumes_exactly(run_train, tmp_path, lora):
    args = (
        "experiment=grpo_addition", *LM_FAST, "trainer=fsdp_sim", "algo.loss.kl_coef=0.05",
        "callbacks=[default,ref_policy_sync,adaptive_kl,rank_consistency]",
        "callbacks.ref_policy_sync.sync_every=3", "callbacks.ref_policy_sync.alpha=0.5",
        f"callbacks.sft_warmup.cache_dir={tmp_path / 'sft'}",
        # LoRA: the unsharded checkpoint form (one file, gathered on rank 0)
        *(("model.lora.r=4", "trainer.strategy.save_distributed_checkpoint=false") if lora else ()),
    )  # fmt: skip
    full, resumed = _kill_and_resume(run_train, tmp_path, args, kill_at=2)
    ckpt = full.run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() if lora else (ckpt / "meta.pt").is_file()
    meta = _meta(full)
    states = {k.split("{")[0]: v for k, v in meta["callbacks"].items()}
    assert states["RefPolicySync"]["num_syncs"] == 2  # steps 3 and 6 of 8
    assert states["AdaptiveKL"]["num_updates"] == 4
    per_rank = meta["plmods"]["per_rank"]
    assert per_rank[0]["prompt_rng"] != per_rank[1]["prompt_rng"]
    policy = full.run_dir / "policy"
    assert (policy / ("adapter_model.safetensors" if lora else "model.safetensors")).is_file()
    _assert_same_end(full, resumed)


@pytest.mark.parametrize(
    ("trainer", "critic", "lora"), [("ddp_sim", "value_head", True), ("fsdp_sim", "critic_model", False)],
    ids=["ddp-lora-value_head", "fsdp-critic_model"],
)
def test_ppo_lm_critics_train_identically_on_both_ranks_and_save(run_train, tmp_path, trainer, critic, lora):
    """PPO on an LM with its critic on 2 processes: a value head on LoRA adapters under DDP, a
    separate critic model under FSDP2 (its trunk sharded like the policy); ranks end identical
    (policy, critic, optimizer, beta) and the critic is saved beside the policy."""
    run = run_train(
        "experiment=ppo_addition", *LM_FAST, f"trainer={trainer}", f"algo/critic={critic}", CHECK,
        f"callbacks.sft_warmup.cache_dir={tmp_path / 'sft'}", *(("model.lora.r=4",) if lora else ()),
    )  # fmt: skip
    assert run.summary["iterations"] == 4 and _consistency(run)["world_size"] == 2
    policy = run.run_dir / "policy"
    if lora:
        assert (policy / "adapter_model.safetensors").is_file() and (policy / "value_head.safetensors").is_file()
    else:
        assert (policy / "model.safetensors").is_file() and (policy / "critic" / "value_head.safetensors").is_file()
        assert (policy / "critic" / "config.json").is_file()


def test_fsdp_trains_the_same_policy_as_ddp(run_train, tmp_path):
    """Same seeds, same per-rank prompts and samples: FSDP (sharded weights gathered for sampling,
    a sharded reference mixed shard by shard, reduce-scattered gradients) ends where DDP does, up
    to float rounding, while training moved the weights by far more."""
    from safetensors.torch import load_file

    sft = tmp_path / "sft"
    args = ("experiment=grpo_addition", *LM_FAST, "algo.loss.kl_coef=0.05", f"callbacks.sft_warmup.cache_dir={sft}",
            "callbacks=[default,ref_policy_sync]", "callbacks.ref_policy_sync.sync_every=3",
            "callbacks.ref_policy_sync.alpha=0.5")  # fmt: skip
    ddp = run_train(*args, "trainer=ddp_sim", run_dir=tmp_path / "ddp")
    fsdp = run_train(*args, "trainer=fsdp_sim", run_dir=tmp_path / "fsdp")
    a, b = (load_file(run.run_dir / "policy" / "model.safetensors") for run in (ddp, fsdp))
    (start_file,) = sft.glob("*/model.safetensors")
    start = load_file(start_file)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-4


def test_a_control_module_refuses_model_parallel_strategy_in_a_users_own_trainer(tmp_path):
    """Outside train.py (which turns trainer=fsdp into DDP for it) a control module under
    ModelParallelStrategy says what to use instead, before any training."""
    import subprocess
    import sys

    script = (
        "import lightning as L\n"
        "from lightning.pytorch.strategies import ModelParallelStrategy\n"
        "from plmods.algos import ControlModule\n"
        "from plmods.envs import ControlEnv\n"
        "from plmods.errors import ConfigError\n"
        "module = ControlModule.ppo(ControlEnv('CartPole-v1', num_envs=4), frames_per_batch=64, minibatch_size=32)\n"
        "trainer = L.Trainer(accelerator='cpu', devices=1, logger=False, enable_progress_bar=False,\n"
        "                    strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1))\n"
        "try:\n"
        "    trainer.fit(module)\n"
        "except ConfigError as err:\n"
        "    print('refused:', err)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "refused: ControlModule replicates its networks (nothing to shard): use DDPStrategy" in proc.stdout, proc.stderr[-2000:]

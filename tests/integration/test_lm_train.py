"""The language algorithms through the real train.py: presets (GRPO, REINFORCE, PPO), callbacks,
process supervision, exact resume (a PPO run killed with SIGKILL included), bad input."""

import csv
import json

import pytest
import torch
from conftest import LM_FAST
from safetensors.torch import load_file


def _metrics(run) -> list[dict[str, str]]:
    (path,) = run.run_dir.glob("csv/*/metrics.csv")
    return list(csv.DictReader(path.open()))


def _column(rows, key) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.fixture
def cache(tmp_path):
    return f"callbacks.sft_warmup.cache_dir={tmp_path / 'sft'}"


def test_grpo_addition_preset_smoke(run_train, cache):
    run = run_train("experiment=grpo_addition", *LM_FAST, cache)
    s = run.summary
    assert s["algo"] == "GRPO" and s["env"] == "addition" and s["iterations"] == 4
    # debug=fast_lm trains: mu = 2 optimizer steps per iteration, and last.ckpt holds them
    ckpt = torch.load(run.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 8 and ckpt["plmods"]["iteration"] == 4
    assert s["monitor"]["key"] == "val/accuracy"
    # before (iteration 0) and after, on the same held-out problems
    assert [row["iteration"] for row in s["val_history"]] == [0, 2, 4]
    for key in ("val/accuracy", "val/reward_mean"):
        assert s[key]["before"] is not None and s[key]["after"] is not None
    assert s["sft"]["steps"] == 20 and len(s["samples"]) == 4
    rows = _metrics(run)
    assert len(_column(rows, "train/loss_objective")) == 4  # every iteration updated
    # mu = 2 passes of one step: the first sees ratio 1 (old log-probs are the sampler's), so
    # nothing is clipped there and the iteration mean is at most 1/2
    assert all(v <= 0.5 for v in _column(rows, "train/clip_fraction"))
    assert _column(rows, "train/reward/length") and _column(rows, "train/reward/correct")
    assert _column(rows, "perf/generated_tokens_per_s")
    assert (run.run_dir / "policy" / "model.safetensors").is_file()
    assert (run.run_dir / "checkpoints" / "last.ckpt").is_file()


def test_grpo_with_reference_sync_and_adaptive_beta(run_train, cache):
    run = run_train(
        "experiment=grpo_addition", *LM_FAST, cache, "algo.loss.kl_coef=0.05",
        "callbacks=[default,ref_policy_sync,adaptive_kl]", "callbacks.ref_policy_sync.sync_every=4",
    )  # fmt: skip
    rows = _metrics(run)
    assert len(_column(rows, "train/kl_to_ref")) == 4
    betas = _column(rows, "train/kl_coef")
    assert len(betas) == 4 and min(abs(betas[0] - b) for b in (0.025, 0.05, 0.1)) < 1e-6  # halved, kept or doubled
    assert _column(rows, "train/ref_syncs")[-1] == 2  # steps 4 and 8 (mu = 2 per iteration)
    ckpt = torch.load(run.run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    states = {k.split("{")[0]: v for k, v in ckpt["callbacks"].items()}
    assert states["RefPolicySync"] == {"last_sync_step": 8, "num_syncs": 2}
    assert float(ckpt["state_dict"]["loss_module.kl_coef"]) == pytest.approx(betas[-1])  # beta: a buffer of the loss
    # the reference is in the checkpoint and equals the policy right after the last sync
    ref = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("ref_policy.")}
    assert ref


def test_countdown_with_process_supervision_logs_sample_tables_to_wandb(run_train, cache):
    run = run_train(
        "experiment=grpo_countdown", *LM_FAST, cache, "logger=wandb",
    )  # fmt: skip
    assert run.summary["env"] == "countdown" and run.summary["iterations"] == 4
    assert run.summary["config"]["algo"]["advantage"]["_target_"] == "plmods.rollout.ProcessAdvantage"
    # one table of sample completions per evaluation: before, iterations 2 and 4 (offline run)
    tables = sorted(run.run_dir.glob("wandb/offline-run-*/files/media/table/val/samples_*.table.json"))
    assert len(tables) == 3
    assert json.loads(tables[0].read_text())["columns"] == ["iteration", "prompt", "completion", "answer", "reward"]
    # every evaluation row, the "before" one (iteration 0) included, is on the iteration x-axis
    from wandb_records import read_run

    (records,) = run.run_dir.glob("wandb/offline-run-*/run-*.wandb")
    _, rows = read_run(records)
    logged = [(r.get("iteration"), r["val/accuracy"]) for r in rows if "val/accuracy" in r]
    assert logged == [(row["iteration"], row["val/accuracy"]) for row in run.summary["val_history"]]
    assert [it for it, _ in logged] == [0, 2, 4]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_grpo_resume_is_exact(run_train, tmp_path, cache, lora):
    args = (
        "experiment=grpo_addition", *LM_FAST, cache, "logger=none", "algo.loss.kl_coef=0.05",
        "callbacks=[default,ref_policy_sync,adaptive_kl]", "callbacks.ref_policy_sync.sync_every=3",
        *(("model.lora.r=4",) if lora else ()),
    )  # fmt: skip
    full, part = run_train.together((args, tmp_path / "full"), ((*args, "trainer.max_epochs=2"), tmp_path / "part"))
    assert part.summary["iterations"] == 2
    resumed = run_train(*args, f"ckpt_path={part.run_dir / 'checkpoints' / 'last.ckpt'}", run_dir=tmp_path / "resumed")
    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    a = load_file(full.run_dir / "policy" / weights)
    b = load_file(resumed.run_dir / "policy" / weights)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ca = torch.load(full.run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    cb = torch.load(resumed.run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    for key in ca["state_dict"]:
        assert torch.equal(ca["state_dict"][key], cb["state_dict"][key]), key  # beta (loss_module.kl_coef) included
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(full.summary["val_history"]) == strip(resumed.summary["val_history"])


def test_a_reward_that_returns_nan_stops_the_first_round_in_one_line(run_train):
    """Bad settings are in tests/integration/test_bad_input_table.py; a bad reward value can only
    show once the first round is scored."""
    run = run_train(
        "experiment=grpo_addition", *LM_FAST, "+algo.rewards.nan=tests.rewards_for_tests.nan_reward",
        "callbacks.sft_warmup.steps=0", "++callbacks.sft_warmup.cache_dir=null", expect_ok=False,
    )
    assert run.proc.returncode == 2, run.output[-2000:]
    assert (
        "plmods: invalid setting: reward function algo.rewards.nan (tests.rewards_for_tests.nan_reward) "
        "returned nan for completion 0"
    ) in run.output
    assert "Traceback" not in run.output
    assert not (run.run_dir / "summary.json").exists()


def test_lora_through_train_py_saves_an_adapter_and_a_merged_model(run_train, cache):
    run = run_train(
        "experiment=grpo_addition", *LM_FAST, cache, "logger=none", "model.lora.r=4", "model.save_merged=true",
        "algo.loss.kl_coef=0.05", "callbacks=[default,ref_policy_sync]", "callbacks.ref_policy_sync.sync_every=2",
    )  # fmt: skip
    policy = run.run_dir / "policy"
    assert (policy / "adapter_config.json").is_file() and (policy / "merged" / "config.json").is_file()
    ckpt = torch.load(run.run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    ref = [k for k in ckpt["state_dict"] if ".ref." in k and "lora_" in k]
    assert ref and not any(k.startswith("ref_policy.") for k in ckpt["state_dict"])  # an adapter, not a copy
    states = {k.split("{")[0]: v for k, v in ckpt["callbacks"].items()}
    assert states["RefPolicySync"]["num_syncs"] == 4  # 8 optimizer steps, every 2


@pytest.mark.parametrize("algo", ["reinforce", "ppo"])
def test_reinforce_and_ppo_presets_train_and_save(run_train, cache, algo):
    run = run_train(f"experiment={algo}_addition", *LM_FAST, cache, "logger=csv")
    s = run.summary
    assert s["algo"] == algo.upper() and s["iterations"] == 4
    assert s["val/accuracy"]["before"] is not None and s["val/accuracy"]["after"] is not None
    ckpt = torch.load(run.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    epochs = {"reinforce": 1, "ppo": 2}[algo]
    assert ckpt["global_step"] == 4 * epochs  # one step per epoch (minibatch: the whole round)
    rows = _metrics(run)
    assert len(_column(rows, "train/loss_objective")) == 4
    if algo == "ppo":
        assert len(_column(rows, "train/loss_critic")) == 4 and len(_column(rows, "train/explained_variance")) == 4
        assert (run.run_dir / "policy" / "value_head.safetensors").is_file()
        assert float(ckpt["state_dict"]["loss_module.kl_coef"]) == pytest.approx(0.05)
        assert len(_column(rows, "train/kl_to_ref")) == 4  # the KL in the reward, measured per round


def test_ppo_killed_mid_iteration_resumes_bit_identical(run_train, tmp_path, cache):
    """PPO with a critic: a run SIGKILLed in the middle of iteration 3 (its round sampled, no update
    yet), resumed from last.ckpt, ends with the uninterrupted run's policy, critic, optimizer state
    and beta (AdaptiveKL moves it every iteration), and the same evaluations."""
    args = ("experiment=ppo_addition", *LM_FAST, cache, "logger=none", "callbacks=[default,adaptive_kl]",
            "callbacks.adaptive_kl.target_kl=1e-6", "trainer.check_val_every_n_epoch=1")  # fmt: skip
    kill = "+callbacks.kill={_target_: tests.callbacks_for_tests.KillAtIteration, iteration: 2}"
    full, killed = run_train.together((args, tmp_path / "full"), ((*args, kill), tmp_path / "killed", False))
    assert killed.proc.returncode != 0 and not (killed.run_dir / "summary.json").exists()
    ckpt = killed.run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["plmods"]["iteration"] == 2
    resumed = run_train(*args, f"ckpt_path={ckpt}", run_dir=tmp_path / "resumed")
    ca = torch.load(full.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    cb = torch.load(resumed.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    assert any(k.startswith("loss_module.critic_network.head") for k in ca["state_dict"])
    for key in ca["state_dict"]:
        assert torch.equal(ca["state_dict"][key], cb["state_dict"][key]), key  # policy, value head, beta
    assert float(ca["state_dict"]["loss_module.kl_coef"]) != 0.05  # beta moved
    for a, b in zip(ca["optimizer_states"][0]["state"].values(), cb["optimizer_states"][0]["state"].values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)  # AdamW moments and steps
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(full.summary["val_history"]) == strip(resumed.summary["val_history"])

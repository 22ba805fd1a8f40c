"""Bad input stops ``train.py`` before training with one message naming the setting."""

import pytest


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["env.env_id=CartPol-v1"], "env.env_id='CartPol-v1' is not a registered gymnasium environment"),
        (
            ["algo.minibatch_size=48"],
            "algo.minibatch_size=48 must be a positive divisor of algo.frames_per_batch=256",
        ),
        (["algo.lr=0"], "algo.lr must be > 0"),
        (["algo.lr=-0.1"], "algo.lr must be > 0"),
        (["algo.clip_epsilon=0"], "algo.clip_epsilon must be in (0, 1)"),
        (["ckpt_path=/no/such/last.ckpt"], "ckpt_path='/no/such/last.ckpt' does not exist"),
    ],
)
def test_invalid_setting(run_train, overrides, message):
    run = run_train("debug=fast", *overrides, expect_ok=False)
    assert run.proc.returncode == 2, run.output[-3000:]
    assert f"plmods: invalid setting: {message}" in run.proc.stderr
    assert "Traceback" not in run.proc.stderr
    assert not (run.run_dir / "summary.json").exists()
    assert not (run.run_dir / "checkpoints").exists()


def test_unknown_group_option_lists_valid_ones(run_train):
    run = run_train("env=cartpol", expect_ok=False)
    assert run.proc.returncode != 0
    assert "Could not find 'env/cartpol'" in run.output
    for option in ("cartpole", "acrobot", "pendulum"):
        assert option in run.output


def test_unknown_key_is_rejected(run_train):
    run = run_train("debug=fast", "algo.clip_epsylon=0.1", expect_ok=False)
    assert run.proc.returncode != 0
    assert "clip_epsylon" in run.output

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
        (["algo.loss.clip_epsilon=0"], "algo.loss.clip_epsilon must be in (0, 1), got 0"),
        (["algo.advantage.gamma=1.5"], "algo.advantage.gamma must be in (0, 1], got 1.5"),
        (["algo.epochs=0"], "algo.epochs must be >= 1, got 0"),
        (
            ["algo=reinforce", "algo.episodes_per_batch=6"],
            "algo.episodes_per_batch=6 must be a positive multiple of env.num_envs=4",
        ),
        (["algo=reinforce", "algo.advantage.baseline=mean"], "algo.advantage.baseline must be one of"),
        (["algo.target_kl=0.01", "algo=reinforce"], "algo.target_kl works only with K3ClipPPOLoss or K3KLPENPPOLoss"),
        (["callbacks=[default,adaptive_kl]", "callbacks.adaptive_kl.target_kl=0"], "callbacks.adaptive_kl.target_kl must be > 0"),
        (["callbacks=[default,adaptive_kl]"], "callbacks.adaptive_kl needs a KL coefficient to adapt"),
        (["ckpt_path=/no/such/last.ckpt"], "ckpt_path='/no/such/last.ckpt' does not exist"),
        (["num_threads=0"], "num_threads=0 must be an integer >= 1"),
        (["num_threads=-1"], "num_threads=-1 must be an integer >= 1"),
        (["num_threads=two"], "num_threads='two' must be an integer >= 1"),
        (["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch=0 must be an integer >= 1"),
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


def test_each_console_line_once_and_no_tips(run_train):
    run = run_train("debug=fast", "logger=none")
    assert run.output.count("GPU available: False") == 1  # Lightning's own handler and Hydra's printed it twice
    assert "litlogger" not in run.output

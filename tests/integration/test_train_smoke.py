"""Smoke runs through the real ``train.py`` with tiny budgets."""

import json

import pytest
import torch
from conftest import PPO_FAST


def test_default_cartpole_fast(run_train):
    run = run_train(*PPO_FAST)
    s = run.summary
    # 256 frames in batches of 64 -> 4 iterations
    assert s["frames"] == 256 and s["iterations"] == 4
    assert s["env"] == "CartPole-v1" and s["algo"] == "PPO"
    assert s["val/episode_return"]["final"] is not None
    returns = [row["val/episode_return"] for row in s["val_history"]]
    assert [row["iteration"] for row in s["val_history"]] == [2, 4]  # every 2nd iteration
    assert s["val/episode_return"] == {"final": returns[-1], "best": max(returns)}
    assert s["solved"] is False  # 50-step episodes cannot reach 475
    assert s["config"]["algo"]["frames_per_batch"] == 64
    assert s["wall_s"] > 0
    ckpts = run.run_dir / "checkpoints"
    assert (ckpts / "last.ckpt").is_file() and (ckpts / "best.ckpt").is_file()
    last = torch.load(ckpts / "last.ckpt", weights_only=False)
    # manual optimization: 4 iterations x 2 epochs x (64 / 32) minibatches optimizer steps
    assert last["global_step"] == 16
    assert last["plmods"]["frames"] == 256
    metrics = (run.run_dir / "csv").rglob("metrics.csv")
    header = next(iter(metrics)).read_text().splitlines()[0]
    for key in (
        "train/loss_objective",
        "train/loss_critic",
        "train/approx_kl",
        "train/clip_fraction",
        "train/explained_variance",
        "perf/fps",
        "frames",
        "val/episode_return",
    ):
        assert key in header


def test_continuous_pendulum_fast(run_train):
    run = run_train(*PPO_FAST, "env=pendulum", "env.obs_norm=true", "algo.loss.entropy_coeff=0.01")
    s = run.summary
    assert s["env"] == "Pendulum-v1" and s["frames"] == 256
    assert s["val/episode_return"]["final"] < 0  # Pendulum rewards are negative


@pytest.mark.parametrize("experiment", ["ppo_acrobot", "ppo_pendulum", "ppo_cartpole"])
def test_experiment_presets_run(run_train, experiment):
    run = run_train(f"experiment={experiment}", *PPO_FAST, "algo.total_frames=128")
    assert run.summary["frames"] == 128
    assert run.summary["config"]["task_name"] == experiment


@pytest.mark.parametrize("algo", ["ppo", "ppo_kl", "reinforce"])
def test_debug_fast_runs_every_algorithm(run_train, algo):
    run = run_train(f"algo={algo}", "debug=fast", "logger=none")
    s = run.summary
    assert s["frames"] >= 1024 and s["iterations"] >= 1
    assert s["val/episode_return"]["final"] is not None


def test_multirun_sweep(run_train, tmp_path):
    sweep = tmp_path / "sweep"
    run = run_train("-m", *PPO_FAST, "algo.lr=0.001,0.003", f"hydra.sweep.dir={sweep}")
    summaries = sorted(sweep.glob("*/summary.json"))
    assert len(summaries) == 2, run.output[-2000:]
    lrs = sorted(json.loads(p.read_text())["config"]["algo"]["lr"] for p in summaries)
    assert lrs == [0.001, 0.003]


def test_a_wandb_sweep_gives_each_job_its_own_run(run_train, tmp_path):
    sweep = tmp_path / "sweep"
    run = run_train("-m", *PPO_FAST, "logger=wandb", "algo.lr=0.001,0.003", f"hydra.sweep.dir={sweep}",
                    env={"WANDB_DIR": ""})  # fmt: skip
    runs = sorted(sweep.glob("*/wandb/offline-run-*"))
    assert len(runs) == 2, run.output[-2000:]
    ids = {path.name.rsplit("-", 1)[-1] for path in runs}
    assert len(ids) == 2  # one W&B run per job, not the first job's run reused
    versions = {torch.load(p, weights_only=True)["plmods"]["logger_version"] for p in sweep.glob("*/checkpoints/last.ckpt")}
    assert versions == ids
    # each run holds its own job's metrics, named <name>-<job>, grouped by the sweep, every
    # validation row on the frames x-axis
    from wandb_records import read_run

    for job, path in enumerate(runs):
        meta, rows = read_run(next(path.glob("run-*.wandb")))
        assert meta["name"] == f"train-{job}" and meta["group"] == "sweep" and meta["id"] == path.name.rsplit("-", 1)[-1]
        summary = json.loads((sweep / str(job) / "summary.json").read_text())
        logged = [(r["frames"], r["val/episode_return"]) for r in rows if "val/episode_return" in r]
        assert logged == [(row["frames"], row["val/episode_return"]) for row in summary["val_history"]]
        lrs = [r["train/lr"] for r in rows if "train/lr" in r]
        assert lrs[0] == pytest.approx(summary["config"]["algo"]["lr"])


def test_wandb_offline_without_key(run_train):
    run = run_train(*PPO_FAST, "logger=wandb", env={"WANDB_DIR": ""})
    offline_runs = list((run.run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1, run.output[-2000:]
    assert (offline_runs[0] / "files").exists() or any(offline_runs[0].iterdir())


def test_tensorboard_logger(run_train):
    run = run_train(*PPO_FAST, "logger=tensorboard")
    assert list((run.run_dir / "tensorboard").rglob("events.out.tfevents.*"))


def test_env_workers_collect_through_train_py(run_train, tmp_path):
    """Envs stepped in 2 torchrl worker processes: the run trains, counts every frame and
    resumes its counters from a checkpoint (the workers start new episodes)."""
    part = run_train(*PPO_FAST, "logger=none", "env.workers=2", "trainer.max_epochs=2", run_dir=tmp_path / "part")
    assert part.summary["frames"] == 128 and part.summary["iterations"] == 2
    ckpt = part.run_dir / "checkpoints" / "last.ckpt"
    assert "workers" in torch.load(ckpt, weights_only=False)["plmods"]["per_rank"][0]
    run = run_train(*PPO_FAST, "logger=none", "env.workers=2", f"ckpt_path={ckpt}", run_dir=tmp_path / "resumed")
    assert run.summary["frames"] == 256 and run.summary["iterations"] == 4

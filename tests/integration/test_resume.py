"""A resumed run continues exactly as the uninterrupted one (CPU, fixed seed)."""

import torch
from conftest import PPO_FAST

FAST = (*PPO_FAST, "algo.total_frames=640", "trainer.check_val_every_n_epoch=3")


def _state(run):
    return torch.load(run.run_dir / "checkpoints" / "last.ckpt", weights_only=False)


def test_resume_matches_uninterrupted_run(run_train, tmp_path):
    full, part = run_train.together(
        ((*FAST, "logger=none"), tmp_path / "full"),
        ((*FAST, "logger=none", "trainer.max_epochs=4"), tmp_path / "part"),
    )
    assert part.summary["iterations"] == 4
    resumed = run_train(
        *FAST,
        "logger=none",
        f"ckpt_path={part.run_dir / 'checkpoints' / 'last.ckpt'}",
        run_dir=tmp_path / "resumed",
    )
    a, b = _state(full), _state(resumed)
    assert a["global_step"] == b["global_step"] == 10 * 2 * 2
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert full.summary["frames"] == resumed.summary["frames"] == 640
    strip = [{k: v for k, v in row.items() if k != "wall_s"} for row in full.summary["val_history"]]
    assert strip == [
        {k: v for k, v in row.items() if k != "wall_s"} for row in resumed.summary["val_history"]
    ]


def test_resume_continues_the_same_wandb_run(run_train, tmp_path):
    part = run_train(*PPO_FAST, "logger=wandb", "trainer.max_epochs=2", run_dir=tmp_path / "part")
    run_id = _state(part)["plmods"]["logger_version"]
    assert run_id
    resumed = run_train(
        *PPO_FAST,
        "logger=wandb",
        f"ckpt_path={part.run_dir / 'checkpoints' / 'last.ckpt'}",
        run_dir=tmp_path / "resumed",
    )
    assert list((resumed.run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert _state(resumed)["plmods"]["logger_version"] == run_id


def _assert_same_weights(a, b):
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


def test_reinforce_resume_matches_uninterrupted_run(run_train, tmp_path):
    """Every REINFORCE batch starts at an env reset, so no episode fragment is in flight at a
    checkpoint and a resumed run continues bit for bit."""
    args = ("algo=reinforce", "debug=fast", "logger=none", "algo.total_frames=1500")
    full, part = run_train.together((args, tmp_path / "full"), ((*args, "trainer.max_epochs=2"), tmp_path / "part"))
    resumed = run_train(*args, f"ckpt_path={part.run_dir / 'checkpoints' / 'last.ckpt'}",
                        run_dir=tmp_path / "resumed")  # fmt: skip
    assert resumed.summary["iterations"] == full.summary["iterations"] > part.summary["iterations"]
    assert resumed.summary["frames"] == full.summary["frames"] >= 1500
    _assert_same_weights(_state(full), _state(resumed))


def test_resuming_a_finished_run_trains_nothing_and_keeps_its_checkpoints(run_train, tmp_path):
    done = run_train(*PPO_FAST, "logger=none", run_dir=tmp_path / "done")
    ckpt_dir = done.run_dir / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpt_dir.iterdir()}
    assert "last.ckpt" in before
    again = run_train(*PPO_FAST, "logger=none", f"ckpt_path={ckpt_dir / 'last.ckpt'}", run_dir=done.run_dir)
    assert again.summary["iterations"] == done.summary["iterations"] == 4
    assert again.summary["frames"] == done.summary["frames"] == 256
    assert {p.name: p.read_bytes() for p in ckpt_dir.iterdir()} == before  # byte-identical

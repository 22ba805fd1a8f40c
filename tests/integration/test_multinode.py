"""trainer=multinode on one machine: two "nodes" launched by torchrun (one process each, gloo),
as on a cluster where each node runs the same command with its own node rank."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PPO_FAST, ROOT

pytestmark = pytest.mark.ddp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_launched_by_torchrun_train_one_model(tmp_path):
    port = _free_port()
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [str(torchrun), "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
             "--master-addr", "127.0.0.1", "--master-port", str(port), str(ROOT / "train.py"),
             *PPO_FAST, "trainer=multinode", "trainer.accelerator=cpu", "trainer.devices=1",
             "trainer.strategy.process_group_backend=gloo", "logger=none", "algo.total_frames=512",
             "+callbacks@callbacks.rank_consistency=rank_consistency", f"hydra.run.dir={tmp_path / f'node{node}'}"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for node in (0, 1)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    summary = json.loads((tmp_path / "node0" / "summary.json").read_text())
    assert summary["frames"] == 512 and summary["iterations"] == 4  # 4 x 64 frames x 2 nodes
    assert not (tmp_path / "node1" / "summary.json").exists()  # only global rank 0 writes
    assert json.loads((tmp_path / "node0" / "rank_consistency.json").read_text())["world_size"] == 2

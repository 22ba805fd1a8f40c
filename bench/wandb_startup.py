"""Start-up cost of the default W&B logger when it cannot log online.

``python -m bench.wandb_startup [--repeats 3]``: runs ``train.py debug=fast logger=wandb`` back
to back under four conditions and prints the median time from process start to the end of the
first iteration (``last.ckpt`` appears) and the difference to offline:

- offline: ``WANDB_MODE=offline`` (the baseline: no probe);
- online, no key: ``WANDB_MODE=online`` without an API key;
- online, key, no network: a key and an unresolvable server (no DNS, as on a machine without network);
- online, key, silent server: a key and a server that accepts TCP but never answers (what a
  transparent proxy does; wandb itself would retry ~95 s): the 2 s probe timeout.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def first_iteration_s(env: dict[str, str], run_dir: Path) -> float:
    """Seconds from process start until last.ckpt first exists (written after iteration 1)."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "debug=fast", "logger=wandb", "algo.total_frames=4096", f"hydra.run.dir={run_dir}"],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    while not ckpt.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"run ended before its first checkpoint (code {proc.returncode})")
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    proc.wait()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    key = {"WANDB_API_KEY": "x" * 40}
    conditions = {
        "offline": {"WANDB_MODE": "offline"},
        "online, no key": {"WANDB_MODE": "online"},
        "online, key, no network": {"WANDB_MODE": "online", **key, "WANDB_BASE_URL": "https://api.wandb.invalid"},
        "online, key, silent server": {"WANDB_MODE": "online", **key, "WANDB_BASE_URL": f"http://127.0.0.1:{silent.getsockname()[1]}"},
    }
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    os.environ.clear()
    os.environ.update(base_env)
    times: dict[str, list[float]] = {name: [] for name in conditions}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, env in conditions.items():  # interleaved: machine noise hits every condition alike
                times[name].append(first_iteration_s({"HOME": tmp, **env}, Path(tmp) / f"{repeat}-{len(times[name])}-{list(conditions).index(name)}"))
    silent.close()
    baseline = statistics.median(times["offline"])
    print(f"{'condition':<28} {'start -> first iteration (median s)':>36} {'vs offline':>11}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<28} {median:>36.2f} {median - baseline:>+10.2f}s")


if __name__ == "__main__":
    main()

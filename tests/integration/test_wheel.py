"""Installed, not only cloned: the wheel holds the configs and the ``plmods-train`` command.

Builds the wheel from this checkout, installs it (no dependencies) into a fresh venv that sees
this venv's dependencies through a path file (not its editable plmods: a path entry's own ``.pth``
files are not run), and trains outside the checkout, with a user's config folder on Hydra's
search path.
"""

import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(args, **kwargs):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


def test_wheel_installs_configs_and_plmods_train_runs_outside_the_checkout(tmp_path):
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(ROOT)])
    wheel = next((tmp_path / "dist").glob("plmods-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "deps_of_the_test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "elsewhere"  # not the checkout: nothing of it on the path
    (work / "my_configs" / "experiment").mkdir(parents=True)
    (work / "my_configs" / "experiment" / "my_ppo.yaml").write_text(
        "# @package _global_\nalgo:\n  lr: 0.0005\ntags: [mine]\n"
    )
    where = _run([str(python), "-c", "import plmods, plmods.cli as c; print(plmods.__file__); print(c.CONFIG_DIR)"], cwd=work)
    module_file, config_dir = where.stdout.split()
    assert module_file.startswith(str(venv)) and config_dir.startswith(str(venv)), where.stdout

    run = _run(
        [str(venv / "bin" / "plmods-train"), "--config-dir", str(work / "my_configs"), "experiment=my_ppo",
         "debug=fast", "logger=none", f"hydra.run.dir={work / 'run'}"],
        cwd=work, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    import json

    summary = json.loads((work / "run" / "summary.json").read_text())
    assert summary["config"]["algo"]["lr"] == 0.0005 and summary["config"]["tags"] == ["mine"], run.stderr[-2000:]
    assert (work / "run" / "checkpoints" / "last.ckpt").is_file() and (work / "run" / "train.log").is_file()

    bad = subprocess.run([str(venv / "bin" / "plmods-train"), "algo.lr=abc", f"hydra.run.dir={work / 'bad'}"],
                         cwd=work, capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "plmods: invalid setting: algo.lr='abc' must be a number (ControlModule.lr)."
    ]

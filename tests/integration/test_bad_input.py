"""Bad input through the real ``python train.py`` process (the long table runs in one process:
``test_bad_input_table.py``): one line, exit code 2, no traceback, nothing written."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algo.lr=abc"], "algo.lr='abc' must be a number (ControlModule.lr)."),
    ],
)
def test_invalid_setting(run_train, overrides, message):
    run = run_train("debug=fast", *overrides, expect_ok=False)
    assert run.proc.returncode == 2, run.output[-3000:]
    assert run.proc.stderr.strip().splitlines() == [f"plmods: invalid setting: {message}"] or (
        f"plmods: invalid setting: {message}" in run.proc.stderr and len(run.proc.stderr.strip().splitlines()) == 1
    )
    assert not run.run_dir.exists()  # stopped before Hydra made the run directory


def test_full_error_shows_the_traceback(run_train):
    run = run_train("debug=fast", "algo.lr=abc", expect_ok=False, env={"HYDRA_FULL_ERROR": "1"})
    assert run.proc.returncode != 0
    assert "Traceback" in run.proc.stderr and "ConfigError" in run.proc.stderr


def test_grpo_without_the_llm_extra_names_the_extra(tmp_path):
    """An install without ``plmods[llm]``: a site-packages without transformers (a farm of links
    to this venv's packages minus the llm extra's, run with ``python -S``)."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    farm = tmp_path / "site"
    farm.mkdir()
    llm = ("transformers", "tokenizers", "peft", "gguf", "math_verify", "safetensors")
    for entry in site.iterdir():
        if not entry.name.lower().startswith(llm) and not entry.name.startswith(("__editable__", "plmods")):
            (farm / entry.name).symlink_to(entry)
    env = {"PYTHONPATH": f"{farm}:{ROOT}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    code = f"from plmods.cli import main; main(['experiment=grpo_addition', 'hydra.run.dir={tmp_path / 'run'}'])"
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        "plmods: invalid setting: algo._target_=plmods.algos.LMModule needs the 'llm' extra "
        "(transformers is not installed): pip install 'plmods[llm]'."
    ]
    assert not (tmp_path / "run").exists()


def test_each_console_line_once_and_no_tips(run_train):
    run = run_train("debug=fast", "logger=none")
    assert run.output.count("GPU available: False") == 1  # Lightning's own handler and Hydra's printed it twice
    assert "litlogger" not in run.output
    assert run.output.count("run settings") == 1 and "algorithm       PPO (ControlModule)" in run.output

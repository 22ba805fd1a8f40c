"""plmods installs as a regular package another project can import."""

from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]


def test_every_plmods_folder_is_a_packaged_package():
    """pyproject lists the packages (configs/ is mapped to plmods.configs): none may be missing."""
    import tomllib

    folders = {
        ".".join(p.relative_to(ROOT).parts)
        for p in (ROOT / "plmods").rglob("*")
        if p.is_dir() and p.name != "__pycache__" and any(p.glob("*.py"))
    } | {"plmods"}
    assert set(find_packages(str(ROOT), include=["plmods*"])) == folders
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert set(listed) == folders | {"plmods.configs"}


def test_public_api_imports():
    from plmods.algos import ControlModule, IterationModule  # noqa: F401
    from plmods.callbacks import AdaptiveKL, RLProgressBar  # noqa: F401
    from plmods.envs import ControlEnv  # noqa: F401
    from plmods.models import MLPActorCritic  # noqa: F401


def test_language_api_imports():
    from plmods.algos import LMModule, MaskedGRPOLoss, MaskedPPOLoss  # noqa: F401
    from plmods.callbacks import RefPolicySync, SFTWarmup, mix_into  # noqa: F401
    from plmods.envs import AdditionTask, CountdownTask, TextTask  # noqa: F401
    from plmods.models import (  # noqa: F401  # noqa: F401
        CriticModel,
        HFCausalLM,
        ResponseScorer,
        SmolLM2,
        TinyCausalLM,
        ValueHead,
        char_tokenizer,
    )
    from plmods.rewards import (  # noqa: F401
        RewardFunctions,
        countdown_answer,
        countdown_steps,
        exact_match,
        last_number,
        math_answer,
    )
    from plmods.rollout import GroupRelativeAdvantage, ProcessAdvantage, TokenGAE, TokenMonteCarloAdvantage  # noqa: F401  # noqa: F401
    from plmods.rollout.sampler import GroupSampler  # noqa: F401


def test_dependencies_point_one_way():
    """An algorithm or model file never imports a callback, and model code never reaches into a
    task's private state (tasks hand out demonstrations through public methods)."""
    import ast

    root = Path(__file__).resolve().parents[2] / "plmods"
    for folder in ("algos", "models", "rollout", "envs", "rewards"):
        for path in (root / folder).glob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    assert not node.module.startswith("plmods.callbacks"), f"{path.name} imports {node.module}"
                if isinstance(node, ast.Import):
                    assert not any(a.name.startswith("plmods.callbacks") for a in node.names), path.name
    for path in (root / "models").glob("*.py"):
        assert "._excluded" not in path.read_text(), path.name

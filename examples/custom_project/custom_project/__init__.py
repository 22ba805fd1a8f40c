"""An example project built on plmods: its own gymnasium env, its own GRPO reward, its own Trainer.

Importing the package registers ``GoRight-v0`` with gymnasium (``custom_project.envs``).
"""

from custom_project import envs as _envs  # noqa: F401  (registers GoRight-v0)

__all__ = ["envs", "rewards", "train"]

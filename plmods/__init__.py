"""plmods: a Lightning-based modular trainer for policy-gradient RL on torchrl.

Import the pieces from their packages: ``plmods.algos`` (LightningModules), ``plmods.envs``
(env factories), ``plmods.models`` (networks), ``plmods.callbacks`` (Lightning callbacks),
``plmods.loggers`` (W&B that never blocks) and ``plmods.run.train`` (the Hydra entry point).
"""

__version__ = "0.2.0"

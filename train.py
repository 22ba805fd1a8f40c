"""Train a policy-gradient agent: ``python train.py [group=option ...] [key=value ...]``.

Examples::

    python train.py                                   # PPO on CartPole-v1 until solved
    python train.py experiment=ppo_acrobot
    python train.py experiment=grpo_addition            # SFT warm-up, then GRPO on a tiny LM
    python train.py algo=ppo env=acrobot trainer=ddp_sim algo.loss.clip_epsilon=0.1
    python train.py -m algo.lr=3e-4,1e-3 seed=0,1,2     # sweep
    python train.py ckpt_path=outputs/.../checkpoints/last.ckpt   # resume

Where plmods is installed, ``plmods-train`` is the same command (``plmods.cli.main``).
"""

from plmods.cli import main

if __name__ == "__main__":
    main()

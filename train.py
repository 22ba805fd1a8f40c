"""Train a policy-gradient agent: ``python train.py [group=option ...] [key=value ...]``.

Examples::

    python train.py                                   # PPO on CartPole-v1 until solved
    python train.py experiment=ppo_acrobot
    python train.py experiment=grpo_addition            # SFT warm-up, then GRPO on a tiny LM
    python train.py algo=ppo env=acrobot trainer=ddp_sim algo.loss.clip_epsilon=0.1
    python train.py -m algo.lr=3e-4,1e-3 seed=0,1,2     # sweep
    python train.py ckpt_path=outputs/.../checkpoints/last.ckpt   # resume
"""

import sys

import hydra
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from plmods.errors import ConfigError


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from plmods.run import train  # heavy imports after Hydra has parsed the command line

    try:
        summary = train(cfg)
    except ConfigError as err:
        print(f"plmods: invalid setting: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except MissingMandatoryValue as err:  # a `???` value in a config group (model.path of hf_causal_lm)
        print(f"plmods: invalid setting: {err.full_key} has no default and must be set ({err.full_key}=...).", file=sys.stderr)
        raise SystemExit(2) from None
    # the value a Hydra sweeper optimises
    return summary["monitor"]["best"]


if __name__ == "__main__":
    main()

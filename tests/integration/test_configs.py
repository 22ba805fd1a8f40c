"""Every config composes, and every option of every group instantiates."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning import Trainer

from plmods.algos import ControlModule, LMModule
from plmods.envs import ControlEnv, TextTask
from plmods.models import HFCausalLM, MLPActorCritic, TinyCausalLM

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


LM_EXPERIMENTS = ("grpo", "reinforce_addition", "reinforce_smollm2", "ppo_addition", "ppo_smollm2")


def _is_lm(experiment: str) -> bool:
    return experiment.startswith(LM_EXPERIMENTS)


def _lm_fast(experiment: str) -> tuple[str, ...]:
    # language presets: a short SFT so that building the module stays cheap
    return ("debug=fast_lm", "++callbacks.sft_warmup.cache_dir=null") if _is_lm(experiment) else ()


@pytest.fixture(scope="module")
def local_llama(tmp_path_factory):
    from lm_fixtures import llama_dir

    return llama_dir(tmp_path_factory.mktemp("llama"))


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_experiments_instantiate(compose_cfg, experiment, local_llama):
    # a real-model preset is composed as is, with its model directory swapped for a small local
    # Llama (the SmolLM2 wheel is not part of the test install)
    overrides = (f"model.path={local_llama}",) if "smollm2" in experiment else _lm_fast(experiment)
    cfg = compose_cfg(f"experiment={experiment}", *overrides)
    env = instantiate(cfg.env)
    model = instantiate(cfg.model)
    module = instantiate(cfg.algo, env=env, model=model)
    if _is_lm(experiment):
        expected = HFCausalLM if "smollm2" in experiment else TinyCausalLM
        assert isinstance(env, TextTask) and isinstance(model, expected)
        assert isinstance(module, LMModule) and module.algorithm == experiment.split("_")[0].upper()
        assert module.hparams.total_iterations == cfg.algo.total_iterations
    else:
        assert isinstance(env, ControlEnv) and isinstance(model, MLPActorCritic)
        assert isinstance(module, ControlModule)
        assert module.hparams.total_frames == cfg.algo.total_frames
    assert f"{type(module).__module__}.{type(module).__name__}".endswith(cfg.algo._target_.split(".")[-1])
    assert cfg.monitor in module.val_metrics  # what best.ckpt and early stopping watch
    assert cfg.task_name == experiment


@pytest.mark.parametrize("env", _options("env"))
def test_env_options_instantiate(compose_cfg, env):
    cfg = compose_cfg(f"env={env}")
    factory = instantiate(cfg.env)
    if isinstance(factory, TextTask):
        assert factory.name == env
    else:
        assert factory.env_id.split("-")[0].lower() == env


@pytest.mark.parametrize("trainer", _options("trainer"))
def test_trainer_options_compose(compose_cfg, trainer):
    cfg = compose_cfg(f"trainer={trainer}")
    assert cfg.trainer._target_ == "lightning.Trainer"
    gpu = cfg.trainer.accelerator == "gpu"
    if trainer in ("default", "cpu") or (gpu and torch.cuda.is_available()):
        assert isinstance(instantiate(cfg.trainer, logger=False), Trainer)
    elif not gpu:  # the CPU presets build their strategy here (processes start only in fit)
        strategy = instantiate(cfg.trainer.strategy)
        assert type(strategy).__name__ in ("DDPStrategy", "ModelParallelStrategy")
        assert cfg.trainer.devices == 2 and strategy.process_group_backend in (None, "gloo")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("trainer", ["gpu", "fsdp"])
def test_gpu_presets_train_grpo(run_train, trainer, tmp_path):
    run = run_train("experiment=grpo_addition", "debug=fast_lm", f"trainer={trainer}", "logger=none",
                    f"callbacks.sft_warmup.cache_dir={tmp_path / 'sft'}")  # fmt: skip
    assert run.summary["iterations"] == 4


@pytest.mark.parametrize("logger", _options("logger"))
def test_logger_options_instantiate(compose_cfg, logger, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose_cfg(f"logger={logger}")
    for node in cfg.logger.values():
        assert instantiate(node) is not None


@pytest.mark.parametrize("callbacks", _options("callbacks"))
def test_callback_options_instantiate(compose_cfg, callbacks):
    cfg = compose_cfg(f"callbacks={callbacks}")
    for node in cfg.callbacks.values():
        assert instantiate(node) is not None


def test_default_is_ppo_on_cartpole_until_solved(compose_cfg):
    cfg = compose_cfg()
    assert cfg.algo._target_ == "plmods.algos.ControlModule"
    assert cfg.env.env_id == "CartPole-v1"
    assert cfg.callbacks.early_stopping.stopping_threshold == 475
    assert cfg.logger.wandb._target_ == "plmods.loggers.wandb_logger"


def test_command_line_style_overrides(compose_cfg):
    cfg = compose_cfg("algo=ppo", "env=acrobot", "trainer=ddp_sim", "algo.loss.clip_epsilon=0.1")
    assert cfg.algo.loss.clip_epsilon == 0.1
    assert cfg.env.env_id == "Acrobot-v1"
    assert cfg.trainer.devices == 2


@pytest.mark.parametrize("algo", _options("algo"))
def test_algo_yaml_mirrors_module_signature(compose_cfg, algo):
    import inspect

    from hydra.utils import get_class

    overrides = ("env=addition", "model=tiny_lm", *_lm_fast("grpo")) if algo in ("grpo", "reinforce_lm", "ppo_lm") else ()
    cfg = compose_cfg(f"algo={algo}", *overrides)
    cls = get_class(cfg.algo._target_)
    params = set(inspect.signature(cls.__init__).parameters) - {"self", "env", "model"}
    assert set(cfg.algo) - {"_target_"} == params
    module = instantiate(cfg.algo, env=instantiate(cfg.env), model=instantiate(cfg.model))
    assert isinstance(module, cls)


def _loss_settings(module):
    loss = module.loss_module
    names = ("loss_critic_type", "normalize_advantage", "entropy_bonus", "clip_value", "increment", "decrement",
             "samples_mc_kl")  # fmt: skip
    return type(loss), {name: getattr(loss, name, None) for name in names}


@pytest.mark.parametrize(("algo", "builder"), [("ppo", "ppo"), ("ppo_kl", "ppo_kl"), ("reinforce", "reinforce")])
def test_control_yaml_values_equal_the_python_builders(compose_cfg, algo, builder):
    """Every value, not only every key: algo/<name>.yaml and ControlModule.<builder>() build the
    same module (same loss type and settings, same estimator settings, same hyperparameters and
    the same state dict, initial weights included)."""
    import torch

    from plmods.algos import ControlModule

    cfg = compose_cfg(f"algo={algo}", "seed=0")
    env = instantiate(cfg.env)
    from_yaml = instantiate(cfg.algo, env=env, model=instantiate(cfg.model))
    from_python = getattr(ControlModule, builder)(env)
    assert _loss_settings(from_yaml) == _loss_settings(from_python)
    assert dict(from_yaml.hparams) == dict(from_python.hparams)
    a, b = from_yaml.state_dict(), from_python.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _estimator_settings(from_yaml) == _estimator_settings(from_python)


def _estimator_settings(module):
    import torch

    estimator = module.advantage_module
    values = {key: getattr(estimator, key, None) for key in ("gamma", "lmbda", "baseline", "baseline_decay",
                                                              "normalize_advantage")}  # fmt: skip
    return type(estimator), {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in values.items()}


@pytest.mark.parametrize("algo", ["reinforce", "ppo"])
def test_smollm2_presets_share_grpos_task_model_and_round(compose_cfg, algo):
    grpo, other = compose_cfg("experiment=grpo_smollm2_addition"), compose_cfg(f"experiment={algo}_smollm2_addition")
    assert other.env == grpo.env and other.model == grpo.model and other.num_threads == grpo.num_threads
    for key in ("prompts_per_batch", "group_size", "max_new_tokens", "temperature", "total_iterations", "lr", "rewards", "eval_problems"):
        assert other.algo[key] == grpo.algo[key], key
    assert other.algo._target_ == grpo.algo._target_ == "plmods.algos.LMModule" and other.algo.loss != grpo.algo.loss


def test_related_presets_inherit(compose_cfg):
    """ppo_kl is ppo with another loss; tiny_lm is hf_causal_lm with a size; one override switches
    GRPO between outcome and process advantages."""
    ppo, ppo_kl = compose_cfg("algo=ppo"), compose_cfg("algo=ppo_kl")
    assert {k: v for k, v in ppo_kl.algo.items() if k not in ("loss", "anneal_clip_epsilon")} == {
        k: v for k, v in ppo.algo.items() if k not in ("loss", "anneal_clip_epsilon")
    }
    tiny, hf = compose_cfg("model=tiny_lm"), compose_cfg("model=hf_causal_lm")
    assert set(hf.model) - {"_target_", "path"} <= set(tiny.model)
    process = compose_cfg("experiment=grpo_addition", "algo/advantage=process")
    assert process.algo.advantage._target_ == "plmods.rollout.ProcessAdvantage"


def test_debug_fast_lm_shrinks_budgets_of_any_model(compose_cfg, local_llama):
    cfg = compose_cfg("experiment=ppo_addition", "model=hf_causal_lm", f"model.path={local_llama}", "debug=fast_lm",
                      "++callbacks.sft_warmup.steps=0")  # fmt: skip
    module = instantiate(cfg.algo, env=instantiate(cfg.env), model=instantiate(cfg.model))
    assert module.hparams.total_iterations == 4 and module.hparams.prompts_per_batch == 4
    assert isinstance(module.model_factory, HFCausalLM)

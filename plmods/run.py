"""``train(cfg)``: the only code that sees the Hydra config.

Instantiates env, model, algorithm module, callbacks, loggers and the Trainer from ``cfg``, fits,
and writes ``summary.json`` into the run's output directory.
"""

from __future__ import annotations

import json
import logging
import re
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from plmods.checkpoint import check_checkpoint, read_checkpoint
from plmods.errors import ConfigError
from plmods.loggers import set_x_axis
from plmods.schema import validate_config
from plmods.utils import configure_torch, quiet_console, quiet_known_warnings

__all__ = ["check", "startup_table", "train"]

log = logging.getLogger(__name__)


def _in_config_terms(error: ConfigError, path: str | None, node: Any) -> ConfigError:
    """The error of a class, which names its constructor arguments (``lr must be > 0``), restated
    with the config paths a ``train.py`` user sets (``algo.lr must be > 0``)."""
    if not path or not isinstance(node, DictConfig):
        return error
    keys = [k for k in node if k != "_target_"]
    if not keys:
        return error
    pattern = re.compile(rf"(?<![\w./])({'|'.join(map(re.escape, keys))})(?=[=\s,).]|$)")
    return ConfigError(pattern.sub(lambda m: f"{path}.{m.group(1)}", str(error)))


def _instantiate(node: Any, path: str | None = None, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that surfaces a ``ConfigError`` raised by the target itself,
    instead of burying it in an InstantiationException traceback, in the config's terms (``path``:
    where ``node`` sits in the config, e.g. ``algo``)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__
        if cause is not None:
            # a nested node's own constructor (e.g. algo.advantage): its keys, under its path
            nested = re.search(r"full_key: (\S+)", str(err))
            if path and isinstance(node, DictConfig) and nested and nested.group(1).startswith(path + "."):
                inner = OmegaConf.select(node, nested.group(1)[len(path) + 1 :])
                if isinstance(inner, DictConfig):
                    raise _in_config_terms(cause, nested.group(1), inner) from None
            raise _in_config_terms(cause, path, node) from None
        raise


def _check_monitor(cfg: DictConfig) -> None:
    """``monitor`` must be a metric the algorithm logs; checked on its class, before building it
    (a language module runs its warm-up when built)."""
    monitor = cfg.get("monitor")
    module_cls = get_class(cfg.algo._target_)
    metrics = getattr(module_cls, "val_metrics", ())
    if monitor and monitor not in metrics:
        raise ConfigError(
            f"monitor={monitor} is not logged by {module_cls.__name__}; it logs "
            f"{', '.join(metrics)} (the experiment presets set monitor for you)."
        )


def _loggers(cfg: DictConfig, resume_version: str | None) -> list[Logger]:
    loggers: list[Logger] = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None or "_target_" not in node:
            continue
        kwargs = {}
        if node._target_.endswith("wandb_logger"):
            kwargs.update(_sweep_job_naming(node))
        if resume_version and node._target_.endswith("wandb_logger"):
            kwargs["id"] = resume_version  # continue the same W&B run
        loggers.append(_instantiate(node, f"logger.{name}", **kwargs))
        log.info("logger %s: %s", name, type(loggers[-1]).__name__)
    return loggers


def _sweep_job_naming(node: DictConfig) -> dict[str, str]:
    """In a ``-m`` sweep each job is its own W&B run: named ``<name>-<job number>`` and grouped
    by the sweep directory (unless the config names a group)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}
    hydra = HydraConfig.get()
    naming = {"name": f"{node.get('name') or hydra.job.name}-{hydra.job.num}"}
    if not node.get("group"):
        naming["group"] = Path(hydra.sweep.dir).name
    return naming


def _callbacks(cfg: DictConfig) -> list[L.Callback]:
    return [
        _instantiate(node, f"callbacks.{name}")
        for name, node in (cfg.get("callbacks") or {}).items()
        if node and "_target_" in node
    ]


def _ddp_if_replicated(cfg: DictConfig, module: Any) -> None:
    """``trainer=fsdp`` / ``fsdp_sim`` with a module that shards nothing (the control modules:
    MLPs of a few thousand parameters) runs as DDP: replicated networks with averaged gradients
    is what that module would get under ``ModelParallelStrategy`` too, and Lightning's
    ``ModelParallelStrategy`` cannot restore a checkpoint into a model without sharded tensors."""
    strategy = cfg.trainer.get("strategy")
    if not isinstance(strategy, DictConfig) or not str(strategy.get("_target_", "")).endswith("ModelParallelStrategy"):
        return
    if module.shards_parameters:
        return
    backend = "gloo" if cfg.trainer.get("accelerator") == "cpu" else "nccl"
    log.info("%s has nothing to shard: trainer.strategy runs as DDP (%s)", type(module).__name__, backend)
    cfg.trainer.strategy = OmegaConf.create(
        {"_target_": "lightning.pytorch.strategies.DDPStrategy", "process_group_backend": backend}
    )


def startup_table(cfg: DictConfig, module: Any, trainer: L.Trainer, loggers: list[Logger], checkpoint: dict[str, Any] | None) -> str:
    """The key resolved settings of this run, logged once at start (and kept in train.log)."""
    algo = cfg.algo
    budget = (
        f"{algo.total_frames:,} frames" if "total_frames" in algo else f"{algo.get('total_iterations', '?')} iterations"
    )
    model = cfg.model.get("path") or cfg.model._target_.rsplit(".", 1)[-1]
    lora = cfg.model.get("lora") or {}
    if lora.get("r"):
        model = f"{model} + LoRA r={lora.r}"
    names = []
    for logger in loggers:
        mode = getattr(logger, "plmods_mode", None)
        names.append(f"{type(logger).__name__}" + (f" ({mode})" if mode else ""))
    resume = (
        f"{cfg.ckpt_path} (iteration {checkpoint['plmods'].get('iteration')})" if checkpoint is not None else "no (new run)"
    )
    rows = [
        ("algorithm", f"{module.algorithm} ({type(module).__name__})"),
        ("env", f"{module.env_name()}" + (f" x {cfg.env.num_envs} envs" if "num_envs" in cfg.env else "")),
        ("model", model),
        ("lr / budget", f"{algo.get('lr')} / {budget}"),
        ("seed / threads", f"{cfg.seed} / {cfg.get('num_threads') or 'torch default'}"),
        ("trainer", f"{type(trainer.strategy).__name__}, {trainer.world_size} process(es), {trainer.accelerator.__class__.__name__.replace('Accelerator', '')}, precision {trainer.precision}"),
        ("loggers", ", ".join(names) or "none"),
        ("resume", resume),
        ("output", str(cfg.output_dir)),
    ]
    width = max(len(key) for key, _ in rows)
    return "run settings\n" + "\n".join(f"  {key:<{width}}  {value}" for key, value in rows)


def summarize(module: Any, cfg: DictConfig, process_s: float) -> dict[str, Any]:
    """The run's headline numbers (written to ``summary.json``): what every run has, then the
    module's own (``module.summary()``: returns for control, accuracy before/after for the LM
    algorithms). ``module`` is a ``plmods.protocols.PlmodsModule``."""
    monitor = cfg.get("monitor")
    monitored = [row[monitor] for row in module.val_history if monitor in row]
    return {
        "algo": module.algorithm,
        "seed": cfg.get("seed"),
        "iterations": module.iteration,
        "wall_s": round(module.train_seconds, 3),
        "process_s": round(process_s, 3),
        # every rank's peak resident memory (a collective under DDP/FSDP: every rank summarizes)
        "peak_rss_gb": [round(kb / 1024**2, 3) for kb in module.gather_per_rank(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)],
        **module.summary(),
        "monitor": {"key": monitor, "best": max(monitored) if monitored else None},
        "val_history": module.val_history,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def _check_top_level(cfg: DictConfig) -> None:
    """Settings no class checks for us: the thread count and the trainer's evaluation interval
    (Lightning divides by it)."""
    threads = cfg.get("num_threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"num_threads={threads!r} must be an integer >= 1 (torch intra-op threads) or null (torch's default).")
    every = cfg.trainer.get("check_val_every_n_epoch")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ConfigError(
            f"trainer.check_val_every_n_epoch={every!r} must be an integer >= 1 (iterations between evaluations) "
            "or null (no evaluation during training)."
        )


def _check_settings(cfg: DictConfig) -> dict[str, Any] | None:
    """The checks that need no object built: types and keys (the schema), top-level ranges,
    ``monitor``, the output directory, and the checkpoint file (returned, loaded weights-only)."""
    validate_config(cfg)
    _check_top_level(cfg)
    _check_monitor(cfg)
    _check_writable(cfg)
    return read_checkpoint(cfg.ckpt_path) if cfg.get("ckpt_path") else None


def _check_writable(cfg: DictConfig) -> None:
    """The run directory can be created and written (probed: permission bits do not bind root,
    a read-only file system binds everyone)."""
    path = Path(str(cfg.output_dir)).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(existing)
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise ConfigError(
            f"output_dir={str(path)!r} cannot be written ({existing}: {err.strerror or type(err).__name__}); "
            "choose another hydra.run.dir."
        ) from None


def _build(cfg: DictConfig, checkpoint: dict[str, Any] | None) -> tuple[Any, Any, Any]:
    """env, model and algorithm module: each constructor checks its own arguments (ranges,
    combinations); then the checkpoint must match the module (algorithm, env, shapes)."""
    env = _instantiate(cfg.env, "env")
    model = _instantiate(cfg.model, "model")
    module = _instantiate(cfg.algo, "algo", env=env, model=model)
    if checkpoint is not None:  # same algorithm, env and (control: built already) network shapes
        check_checkpoint(checkpoint, module=module)
    return env, model, module


def check(cfg: DictConfig, build: bool = True) -> None:
    """Everything :func:`train` checks before it starts work, without starting it (``train.py``
    runs it for every job of a sweep before the first one starts): one ``ConfigError`` for the
    first bad setting. ``build``: also construct env, model, module and callbacks (their own
    argument checks; no weights are loaded, no warm-up runs, the caller's RNG is left as it was)."""
    checkpoint = _check_settings(cfg)
    if build:
        from lightning.pytorch.utilities.seed import isolate_rng

        with isolate_rng():
            _, _, module = _build(cfg, checkpoint)
            for callback in _callbacks(cfg):
                if hasattr(callback, "check_module"):  # AdaptiveKL, RefPolicySync: what they need of the module
                    callback.check_module(module)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured module; return the summary (also written to ``<output_dir>/summary.json``)."""
    process_start = time.perf_counter()
    checkpoint = _check_settings(cfg)
    configure_torch(cfg.get("num_threads"))
    quiet_known_warnings()
    quiet_console()
    ckpt_path = cfg.get("ckpt_path")
    L.seed_everything(cfg.seed, verbose=False)
    env, model, module = _build(cfg, checkpoint)
    callbacks = _callbacks(cfg)
    loggers = _loggers(cfg, checkpoint["plmods"].get("logger_version") if checkpoint else None)
    _ddp_if_replicated(cfg, module)
    trainer: L.Trainer = _instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if trainer.is_global_zero:
        log.info("%s", startup_table(cfg, module, trainer, loggers, checkpoint))
        log.info("%s", module.batch_plan(trainer.world_size).table())

    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if isinstance(logger, WandbLogger):
            set_x_axis(logger, module.x_axis)

    # plmods checkpoints hold tensors and plain data only: Lightning's weights-only load (plmods.checkpoint)
    trainer.fit(module, ckpt_path=ckpt_path)
    last_eval = module.val_history[-1]["iteration"] if module.val_history else None
    if last_eval != module.iteration and not trainer.interrupted:
        trainer.validate(module, verbose=False)  # the final policy always gets evaluated

    summary = summarize(module, cfg, time.perf_counter() - process_start)
    module.save_policy(str(Path(cfg.output_dir) / "policy"))  # every rank: a sharded policy is gathered first; rank 0 writes
    if trainer.is_global_zero:
        out = Path(cfg.output_dir) / "summary.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2, default=str))
        log.info("%s on %s: %s -> %s", summary["algo"], summary.get("env"), module.summary_line(), out)
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update({"solved": summary.get("solved"), "iterations": summary["iterations"]})
        logger.finalize("success")
        if isinstance(logger, WandbLogger) and hasattr(logger.experiment, "finish"):
            # WandbLogger.finalize leaves the run open: the next job of a -m sweep (same process)
            # would get this run back from wandb.init and log into it
            logger.experiment.finish()
    return summary

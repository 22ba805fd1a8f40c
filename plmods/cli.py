"""The command line: ``python train.py`` in a checkout, ``plmods-train`` where plmods is installed.

Both run :func:`main`: the same Hydra config (``configs/``, shipped inside the wheel as
``plmods/configs``), the same overrides, groups, presets and ``-m`` sweeps. Your own config
folders join through Hydra's search path (``--config-dir DIR`` or ``hydra.searchpath=[file://DIR]``).

Before Hydra starts a job, :func:`preflight` composes the command line the way Hydra will and
checks it (``plmods.run.check``), for every job of a sweep: a bad setting ends the command with
one line naming the setting, the value and what is valid, exit code 2, before any run directory
is created or any job runs. ``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import warnings
from pathlib import Path

from plmods.errors import ConfigError

__all__ = ["CONFIG_DIR", "main", "preflight"]


def _config_dir() -> Path:
    package = Path(__file__).resolve().parent
    for candidate in (package / "configs", package.parent / "configs"):  # wheel, checkout
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(f"plmods' configs are missing (looked in {package / 'configs'} and {package.parent / 'configs'})")


CONFIG_DIR = _config_dir()
# Hydra's own flags: these print or inspect instead of running, so nothing is checked
_INSPECT_FLAGS = {"-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info", "-sc", "--shell-completion",
                  "-p", "--package", "--resolve", "--experimental-rerun"}
_VALUE_FLAGS = {"-cd": "config_dir", "--config-dir": "config_dir", "-cn": "config_name", "--config-name": "config_name",
                "-cp": "config_path", "--config-path": "config_path"}
MAX_BUILT_JOBS = 8  # sweep jobs whose objects are constructed in the preflight; the rest: schema only
# config paths renamed in 0.2 (the same knob has the same name in every algorithm): the old path
# keeps working for one release, with a warning
RENAMED = {
    "algo.num_iterations": "algo.epochs",
    "algo.kl_coef": "algo.loss.kl_coef",
    "algo.clip_epsilon": "algo.loss.clip_epsilon",
    "algo.clip_epsilon_high": "algo.loss.clip_epsilon_high",
    "algo.aggregation": "algo.loss.aggregation",
    "algo.entropy_coeff": "algo.loss.entropy_coeff",
    "algo.loss.beta": "algo.loss.kl_coef",
}


def renamed_overrides(args: list[str]) -> list[str]:
    """``args`` with every deprecated config path (``RENAMED``) replaced, one warning line each."""
    out = []
    for arg in args:
        prefix = arg[: len(arg) - len(arg.lstrip("+~"))]
        key, sep, value = arg[len(prefix) :].partition("=")
        if key in RENAMED:
            print(f"plmods: {key} is deprecated (removed in 0.3): use {RENAMED[key]}", file=sys.stderr)
            arg = f"{prefix}{RENAMED[key]}{sep}{value}"
        out.append(arg)
    return out


def _fail(err: ConfigError) -> None:
    print(f"plmods: invalid setting: {' '.join(str(err).split())}", file=sys.stderr)
    raise SystemExit(2)


def _parse_command_line(args: list[str]) -> dict | None:
    """Hydra's flags and overrides; None when a flag asks Hydra to inspect rather than run."""
    parsed: dict = {"multirun": False, "config_dir": None, "config_name": "train", "config_path": None, "overrides": []}
    i = 0
    while i < len(args):
        arg = args[i]
        flag, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag in _INSPECT_FLAGS or arg in _INSPECT_FLAGS:
            return None
        if arg in ("-m", "--multirun"):
            parsed["multirun"] = True
        elif flag in _VALUE_FLAGS:
            if not inline:
                i += 1
                inline = args[i] if i < len(args) else ""
            parsed[_VALUE_FLAGS[flag]] = inline
        elif arg.startswith("-") and not arg.startswith(("-m=",)) and "=" not in arg:
            return None  # a flag this preflight does not know: leave it all to Hydra
        else:
            parsed["overrides"].append(arg)
        i += 1
    return parsed


def _jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of every job Hydra's basic sweeper will launch (one without ``-m``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as err:
        raise ConfigError(str(err).strip().splitlines()[0]) from None
    if not multirun:
        return [overrides]
    fixed = [text for text, o in zip(overrides, parsed, strict=True) if not o.is_sweep_override()]
    axes = []
    for o in parsed:
        if o.is_sweep_override():
            try:
                axes.append([f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()])
            except Exception:  # an interval sweep (an optimising sweeper's): its values are not known here
                continue
    return [fixed + list(combo) for combo in itertools.product(*axes)]


def _composition_error(err: Exception, job: list[str], compose) -> ConfigError:
    """Hydra's multi-line composition errors as one line."""
    text = str(err)
    missing = re.search(r"Could not find '([^']+)/([^']+)'.*?Available options in '[^']+':(.*?)(?:Config search path|$)", text, re.S)
    if missing:
        group, option, options = missing.group(1), missing.group(2), missing.group(3).split()
        return ConfigError(f"{group}={option} is not an option of the {group} group; options: {', '.join(options)}.")
    struct = re.search(r"Could not override '([^']+)'", text)
    if struct:
        key = struct.group(1)
        parent, _, name = key.rpartition(".")
        hint = f"check the spelling, or add a key with +{key}=... only if its class takes it"
        try:  # name the settings of the node the key was meant for
            from hydra.utils import get_class
            from omegaconf import OmegaConf

            from plmods.schema import settings_of

            cfg = compose("train", overrides=[o for o in job if not o.lstrip("+~").startswith(key + "=")])
            node = OmegaConf.select(cfg, parent) if parent else None
            if node is not None and "_target_" in node:
                target = get_class(node._target_)
                if name in settings_of(target):  # a real setting the config file leaves to its default
                    return ConfigError(f"{key} is not in the config: {target.__name__} takes it, add it with +{key}=...")
                hint = f"its settings: {', '.join(s for s in settings_of(target))}"
                return ConfigError(f"{key} is not a setting of {target.__name__} ({parent}); {hint}.")
        except Exception:
            pass
        return ConfigError(f"{key} is not a setting ({hint}).")
    merge = re.search(r"Error merging override (\S+)", text)
    cause = " ".join(str(getattr(err, "__cause__", "") or "").split())
    if merge and "Cannot merge DictConfig with ListConfig" in cause:
        return ConfigError(f"{merge.group(1)}: a list cannot replace a mapping here (pass key=value settings inside it).")
    if merge and "Cannot merge ListConfig with DictConfig" in cause:
        return ConfigError(f"{merge.group(1)}: a mapping cannot replace a list here.")
    return ConfigError(" ".join(text.split()) + (f": {cause.split(' full_key:')[0]}" if cause and cause not in text else ""))


def preflight(args: list[str]) -> None:
    """Compose and check every job of this command line (see the module docstring)."""
    parsed = _parse_command_line(args)
    if parsed is None or parsed["config_path"]:
        return  # inspection flags, or a config path of the user's own (Hydra resolves it)
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from plmods.run import check

    extra = [f"hydra.searchpath=[file://{Path(parsed['config_dir']).absolute()}]"] if parsed["config_dir"] else []
    jobs = _jobs(parsed["overrides"], parsed["multirun"])
    logging.disable(logging.WARNING)  # construction notices belong to the run itself
    try:
        with warnings.catch_warnings(), initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="train"):
            warnings.simplefilter("ignore")
            for number, job in enumerate(jobs):
                try:
                    cfg = compose(parsed["config_name"], overrides=job + extra, return_hydra_config=True)
                except Exception as err:  # hydra.errors.* and omegaconf.errors.*: composition failed
                    raise _composition_error(err, job, compose) from None
                with open_dict(cfg):
                    run_dir = cfg.hydra.sweep.dir + "/" + str(number) if parsed["multirun"] else cfg.hydra.run.dir
                    cfg.hydra.runtime.output_dir = str(Path(run_dir).absolute())
                    cfg.hydra.job.num = number
                HydraConfig.instance().set_config(cfg)
                check(cfg, build=number < MAX_BUILT_JOBS)
    finally:
        logging.disable(logging.NOTSET)
        GlobalHydra.instance().clear()


def main(argv: list[str] | None = None) -> None:
    """``train.py`` / ``plmods-train``: preflight, then Hydra runs :func:`plmods.run.train` per job."""
    import hydra
    from omegaconf.errors import MissingMandatoryValue

    args = renamed_overrides(list(sys.argv[1:] if argv is None else argv))
    sys.argv = [sys.argv[0], *args]  # (Lightning relaunches the other DDP ranks with these)
    verbose = os.environ.get("HYDRA_FULL_ERROR") == "1"
    try:
        preflight(args)
    except ConfigError as err:
        if verbose:
            raise
        _fail(err)
    except MissingMandatoryValue as err:
        if verbose:
            raise
        _fail(ConfigError(f"{err.full_key} has no default and must be set ({err.full_key}=...)."))

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
    def task(cfg):
        from plmods.run import train

        try:
            summary = train(cfg)
        except ConfigError as err:
            if verbose:
                raise
            _fail(err)
        except MissingMandatoryValue as err:  # a `???` value the preflight did not reach
            _fail(ConfigError(f"{err.full_key} has no default and must be set ({err.full_key}=...)."))
        return summary["monitor"]["best"]  # the value a Hydra sweeper optimises

    task()

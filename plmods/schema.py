"""The config's typed schema, checked before any work starts.

Every node of a plmods config with a ``_target_`` is built by Hydra as ``target(**node)``, so the
target's signature *is* that node's schema: its parameter names are the valid keys and its type
hints the valid types. :func:`validate_config` walks the composed config and checks every key
and value against those hints (``int``, ``float``, ``bool``, ``str``, ``None``, unions,
``Literal``, lists, tuples, mappings, and "a mapping with ``_target_``" for objects), then the
top-level settings against :data:`TOP_LEVEL`. A bad setting is one ``ConfigError`` naming its
config path, the value and what is valid. Hand-writing a dataclass per class (Hydra structured
configs) would state every argument twice; ranges and cross-setting rules stay in the classes'
own constructors, whose errors name their arguments (``run.py`` maps them to config paths).
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from plmods.errors import ConfigError

__all__ = ["TOP_LEVEL", "import_target", "settings_of", "validate_config"]

# settings outside the groups: name -> type (ranges are checked by run.py)
TOP_LEVEL: dict[str, Any] = {
    "task_name": str,
    "seed": int,
    "num_threads": int | None,
    "ckpt_path": str | None,
    "tags": list[str],
    "output_dir": str,
    "monitor": str | None,
}
# groups whose node is built from one _target_ (run.py passes the keys in the value itself)
_GROUPS = {"algo": {"env", "model"}, "env": set(), "model": set(), "trainer": {"callbacks", "logger"}}
# groups that map names to optional nodes
_MAPPINGS = ("logger", "callbacks")
_HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}
# classes whose **kwargs go to a backend that takes more than the class declares (SummaryWriter, wandb.init, ...)
_FORWARDING_MODULES = ("lightning.pytorch.loggers.", "lightning.fabric.loggers.")
# the extra that provides a module plmods imports lazily
_EXTRAS = {"transformers": "llm", "tokenizers": "llm", "peft": "llm", "gguf": "llm", "math_verify": "llm", "ray": "ray"}


def import_target(target: str, path: str) -> Any:
    """The class or function ``target`` names; a missing optional dependency names its extra."""
    module_name, _, attr = str(target).rpartition(".")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except ModuleNotFoundError as err:
        top = (err.name or "").split(".")[0]
        if top in _EXTRAS:
            raise ConfigError(
                f"{path}._target_={target} needs the '{_EXTRAS[top]}' extra ({top} is not installed): "
                f"pip install 'plmods[{_EXTRAS[top]}]'."
            ) from None
        raise ConfigError(f"{path}._target_={target} cannot be imported: no module named {err.name!r}.") from None
    except (AttributeError, ValueError, ImportError):
        raise ConfigError(f"{path}._target_={target!r} is not an importable class or function (module.Name).") from None


def _parameters(target: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """Parameters, type hints and whether unknown keys are accepted (``**kwargs`` that no base
    class explains). A class forwarding ``**kwargs`` to its base gets the base's parameters too."""
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    functions = [c.__init__ for c in inspect.getmro(target) if "__init__" in vars(c)] if inspect.isclass(target) else [target]
    for depth, function in enumerate(functions):
        if function is object.__init__:
            return params, hints, False
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            return params, hints, True
        try:
            own_hints = typing.get_type_hints(function)
        except Exception:  # a hint naming a type that only exists under TYPE_CHECKING: unchecked
            own_hints = {}
        forwards = False
        for name, param in signature.parameters.items():
            if name == "self" or param.kind is inspect.Parameter.VAR_POSITIONAL:
                continue
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                forwards = True
                continue
            # a base class's parameter is reached through **kwargs: never required by the schema
            params.setdefault(name, param if depth == 0 else param.replace(default=None))
            if name in own_hints:
                hints.setdefault(name, own_hints[name])
        if not forwards:
            # a parameterless base __init__ (an ABC's) explains no forwarded **kwargs: keep them open
            # (a parameterless base __init__ swallows them: a typo would be silently ignored, so
            # the keys stay closed; loggers hand theirs to their backends: open)
            return params, hints, getattr(target, "__module__", "").startswith(_FORWARDING_MODULES)
        if not inspect.isclass(target):
            return params, hints, True
    return params, hints, True


def settings_of(target: Any) -> list[str]:
    """The keys a config node for ``target`` may set."""
    return sorted(_parameters(target)[0])


def _is_node(value: Any) -> bool:
    return isinstance(value, dict) and "_target_" in value


_PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _describe(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a) for a in args))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if annotation in names:
        return names[annotation]
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable) or annotation in (list, tuple):
        return f"a list of {_PLURALS.get(args[0], 'items')}" if args and args[0] is not Ellipsis else "a list"
    if origin in (dict, collections.abc.Mapping) or annotation is dict:
        return "a mapping"
    name = getattr(annotation, "__name__", None) or str(annotation)
    return f"a mapping with _target_ (a {name})"


def _conforms(value: Any, annotation: Any) -> bool:
    """``value`` (plain containers, as Hydra hands them to the target) fits ``annotation``.
    Forms not listed here are not checked (True)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    if origin in (Union, types.UnionType):
        # a scalar for `float | torch.Tensor` is judged by the builtin members: a string is not a float
        builtin = [a for a in args if a in (bool, int, float, str, type(None)) or get_origin(a) is Literal]
        if builtin and not isinstance(value, (dict, list)) and not any(a in (str, Path) for a in args):
            return any(_conforms(value, a) for a in builtin)
        return any(_conforms(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if origin is Literal:
        return value in args
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation in (str, Path, os.PathLike):
        return isinstance(value, str)
    if _is_node(value):  # built by Hydra; its own keys are checked when the walk reaches it
        return True
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_conforms(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(_conforms(v, args[0]) for v in value)
    if origin in (dict, collections.abc.Mapping) or annotation is dict:
        return isinstance(value, dict) and (len(args) < 2 or all(_conforms(v, args[1]) for v in value.values()))
    if origin is collections.abc.Callable or annotation is collections.abc.Callable:
        return False  # a callable comes from a _target_ node
    if inspect.isclass(annotation):
        # an object argument: a mapping without _target_ or a list cannot become one; scalars
        # (a device string for torch.device) are left to the class
        return not isinstance(value, (dict, list))
    return True


def _plain(node: Any, path: str) -> Any:
    """``node`` resolved to plain Python, a missing or broken interpolation named by path."""
    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True) if isinstance(node, (DictConfig, ListConfig)) else node
    except MissingMandatoryValue as err:
        key = err.full_key or path  # (full_key is already the path from the config's root)
        raise ConfigError(f"{key} has no default and must be set ({key}=...).") from None
    except InterpolationResolutionError as err:
        raise ConfigError(f"{err.full_key or path} cannot be resolved: {' '.join(str(err).split(' full_key:')[0].split())}") from None


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path and key else (path or str(key))


def _check_node(node: dict[str, Any], path: str, injected: set[str] = frozenset()) -> None:
    target = import_target(node["_target_"], path)
    params, hints, open_keys = _parameters(target)
    name = getattr(target, "__name__", str(target))
    for key, value in node.items():
        if key in _HYDRA_KEYS:
            continue
        where = _join(path, key)
        if key not in params:
            if open_keys:
                continue
            raise ConfigError(f"{where} is not a setting of {name}; its settings: {', '.join(sorted(params))}.")
        annotation = hints.get(key, inspect.Parameter.empty)
        if not _conforms(value, annotation):
            raise ConfigError(f"{where}={value!r} must be {_describe(annotation)} ({name}.{key}).")
        _check_children(value, where)
    if not node.get("_partial_"):
        required = [
            k for k, p in params.items()
            if p.default is inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_KEYWORD
            and k not in node and k not in injected
        ]
        if required:
            raise ConfigError(f"{_join(path, required[0])} has no default and must be set ({name} needs it).")


def _check_children(value: Any, path: str) -> None:
    if _is_node(value):
        _check_node(value, path)
    elif isinstance(value, dict):
        for key, child in value.items():
            _check_children(child, _join(path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            _check_children(child, f"{path}[{i}]")


def validate_config(cfg: DictConfig) -> None:
    """Check every setting of a composed plmods config; raise one ``ConfigError`` for the first bad one."""
    for key, annotation in TOP_LEVEL.items():
        if key in cfg:
            value = _plain(cfg[key] if key != "output_dir" else str(cfg[key]), key)
            if not _conforms(value, annotation):
                raise ConfigError(f"{key}={value!r} must be {_describe(annotation)}.")
    for group, injected in _GROUPS.items():
        node = _plain(cfg.get(group), group)
        if not _is_node(node):
            raise ConfigError(f"{group} must be a mapping with _target_ (choose an option of the {group} group: {group}=...), got {node!r}.")
        _check_node(node, group, injected)
    for group in _MAPPINGS:
        nodes = _plain(cfg.get(group), group)
        if nodes is None:
            continue
        if not isinstance(nodes, dict):
            raise ConfigError(f"{group}={nodes!r} must be a mapping of names to {group} settings (or null).")
        for name, node in nodes.items():
            if node is None:
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"{group}.{name}={node!r} must be a mapping with _target_ (or null to disable it).")
            if _is_node(node):  # a mapping without _target_ (settings for an option not chosen) is unused
                _check_node(node, f"{group}.{name}")

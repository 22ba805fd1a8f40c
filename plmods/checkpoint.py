"""plmods checkpoints: safe to load with ``torch.load(..., weights_only=True)``, and validated
before a run uses them.

Lightning writes what the module and callbacks hand it. plmods' own bookkeeping (collector
carriers as TensorDicts, numpy RNG states, Hydra containers among the hyperparameters) would need
unpickling of arbitrary classes, so :func:`encode` stores it as tensors, numbers, strings, lists
and dicts only (torch's weights-only allow-list) and :func:`decode` rebuilds it on load. Nothing is
registered globally: a plain ``torch.load`` in a process that never imported plmods works too.
The gymnasium sub-envs of a control run stay a pickled ``bytes`` blob (any env, physics and RNG
included); it is opaque to ``torch.load`` and unpickled only when a run resumes from the file.

:func:`read_checkpoint` and :func:`check_checkpoint` turn a file that is not a readable plmods
checkpoint of the same algorithm, env and network shapes into one ``ConfigError`` line.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

from plmods.errors import ConfigError

__all__ = ["FORMAT", "check_checkpoint", "check_state_shapes", "decode", "encode", "read_checkpoint"]

FORMAT = 1  # checkpoint["plmods"]["format"]: bumped when the layout changes
_TD, _ND = "__plmods_tensordict__", "__plmods_ndarray__"


def encode(obj: Any, lossy: bool = False) -> Any:
    """``obj`` in types ``torch.load(weights_only=True)`` accepts; :func:`decode` inverts it.
    ``lossy`` (hyperparameters, a record only): a function or class becomes its dotted path (a
    user's reward function would otherwise make the file unloadable without the user's package),
    any other object its ``repr``."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if lossy and not isinstance(obj, (dict, list, tuple, str, int, float, bool, type(None), torch.Tensor, Path)):
        if isinstance(obj, (DictConfig, ListConfig)):
            return encode(OmegaConf.to_container(obj, resolve=True), lossy)
        if callable(obj) and hasattr(obj, "__qualname__"):
            return f"{obj.__module__}.{obj.__qualname__}"
        return repr(obj)

    if isinstance(obj, TensorDictBase):
        return {_TD: encode(obj.to_dict()), "batch_size": list(obj.batch_size)}
    if isinstance(obj, np.ndarray):
        return {_ND: torch.from_numpy(obj.astype(np.int64) if obj.dtype.kind == "u" else obj.copy()), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (DictConfig, ListConfig)):
        return encode(OmegaConf.to_container(obj, resolve=True), lossy)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        items = {key: encode(value, lossy) for key, value in obj.items()}
        return OrderedDict(items) if isinstance(obj, OrderedDict) else items  # (a defaultdict is unsafe)
    if isinstance(obj, (list, tuple)):
        return type(obj)(encode(value, lossy) for value in obj)
    return obj


def decode(obj: Any) -> Any:
    """Inverse of :func:`encode` (a checkpoint without plmods' markers comes back unchanged)."""
    if isinstance(obj, dict):
        if _TD in obj:
            return TensorDict(decode(obj[_TD]), batch_size=obj["batch_size"])
        if _ND in obj:
            return obj[_ND].numpy().astype(np.dtype(obj["dtype"]))
        return {key: decode(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(decode(value) for value in obj)
    return obj


def read_checkpoint(path: str | Path, setting: str = "ckpt_path") -> dict[str, Any]:
    """The checkpoint at ``path`` (a ``.ckpt`` file, or a sharded ``.ckpt`` directory's
    ``meta.pt``) loaded weights-only; a missing, unreadable or foreign file is one ConfigError."""
    path = Path(path)
    file = path / "meta.pt" if path.is_dir() else path
    where = f"{setting}={str(path)!r}"
    if not file.is_file():
        raise ConfigError(
            f"{where} does not exist. Pass the path of a .ckpt file (or, after trainer=fsdp, a .ckpt "
            "directory) written by a previous run (e.g. <run dir>/checkpoints/last.ckpt), or leave it unset."
        )
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load's failures on a corrupt file are of many types
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        reason = lines[0] if lines else type(err).__name__
        if "Unsupported global" in str(err):
            reason = "it holds objects other than tensors and plain data (not a plmods checkpoint of this version)"
        else:
            reason = f"corrupt or truncated ({type(err).__name__}: {reason[:120]})"
        raise ConfigError(f"{where} is not a readable checkpoint: {reason}. Pass a last.ckpt or best.ckpt written by plmods.") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("plmods"), dict):
        raise ConfigError(f"{where} was not written by plmods (no plmods section). Pass a last.ckpt or best.ckpt of a plmods run.")
    return checkpoint


def check_checkpoint(checkpoint: dict[str, Any], *, module: Any, setting: str = "ckpt_path") -> None:
    """``checkpoint`` was written by the same algorithm on the same env as ``module`` (and, when
    ``module`` has its parameters already, networks of the same shapes)."""
    saved = checkpoint["plmods"]
    mine = module.checkpoint_identity()
    for key, what in (("module", "algorithm"), ("env", "env")):
        if key in saved and saved[key] != mine[key]:
            raise ConfigError(
                f"{setting} was written by a run with {what} {saved[key]}, but this run's {what} is {mine[key]}; "
                f"resume with the {what} the checkpoint was written with, or start a new run."
            )
    own = module.state_dict()
    if own and "state_dict" in checkpoint:  # (a sharded checkpoint's meta.pt holds no weights)
        check_state_shapes(checkpoint["state_dict"], own, setting=setting)


def check_state_shapes(saved: dict[str, Any], own: dict[str, Any], setting: str = "ckpt_path") -> None:
    """Same parameter names and shapes (a different network size or env spec is named)."""
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    if missing or unexpected:
        names = ", ".join((missing or unexpected)[:3])
        raise ConfigError(
            f"{setting} holds a different network: {'missing' if missing else 'unexpected'} parameters {names}; "
            "resume with the model settings the checkpoint was written with."
        )
    for name, tensor in own.items():
        theirs = saved[name]
        if hasattr(theirs, "shape") and hasattr(tensor, "shape") and tuple(theirs.shape) != tuple(tensor.shape):
            raise ConfigError(
                f"{setting} holds {name} of shape {list(theirs.shape)}, this run's is {list(tensor.shape)}; "
                "resume with the env and model settings the checkpoint was written with."
            )

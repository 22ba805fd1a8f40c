"""FSDP2 (``fully_shard``) for plmods' language models under Lightning's ``ModelParallelStrategy``.

``shard_causal_lm`` shards every decoder layer, then the model itself (the root holds the
embedding, the final norm and the head), over a data-parallel device mesh. The decoder layers are
found from transformers' own ``_no_split_modules`` (the block classes accelerate never splits), so
any causal LM works; with PEFT the inner transformers model is the root: ``PeftModel.generate``
calls it directly, which would skip a root hook on the ``PeftModel`` (fsdp2-cpu-facts, section 3).

``gathered`` unshards every FSDP module for a block that runs many small forwards (sampling:
one forward per token), so the block runs without collectives and each rank may stop at its own
length; it costs one full copy of the weights per rank while it lasts.

``full_state_dict`` gathers the whole model's state onto rank 0 (torch's distributed-checkpoint
helper), for saving the trained policy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard

__all__ = ["shard_causal_lm", "is_sharded", "gathered", "reshard", "full_state_dict", "decoder_layers"]


def _transformers_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside ``model`` (itself, or a PEFT model's base model)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers model: instances of its ``_no_split_modules`` classes."""
    hf = _transformers_model(model)
    names = set(getattr(hf, "_no_split_modules", None) or ())
    layers = [m for m in hf.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"{type(hf).__name__} lists no decoder-layer classes in `_no_split_modules`; "
            "shard it yourself in configure_model."
        )
    return layers


def shard_causal_lm(model: torch.nn.Module, mesh: DeviceMesh) -> None:
    """``fully_shard`` each decoder layer of ``model``, then its transformers model as the root.
    Parameters become ``DTensor`` shards; forwards gather one layer at a time."""
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(_transformers_model(model), mesh=mesh)


def is_sharded(model: torch.nn.Module) -> bool:
    return any(isinstance(m, FSDPModule) for m in model.modules())


@contextlib.contextmanager
def gathered(model: torch.nn.Module) -> Iterator[bool]:
    """Inside the block every FSDP module of ``model`` holds its full parameters (gathered once,
    kept across forwards); yields whether ``model`` is sharded. A no-op for an unsharded model."""
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in modules:
        m.set_reshard_after_forward(False)
        m.unshard()  # covers this module's own parameter group only: every module is called
    try:
        yield bool(modules)
    finally:
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(True)


def reshard(model: torch.nn.Module) -> None:
    """Free every gathered parameter of ``model``: its parameters are shards again. FSDP leaves
    the root gathered after a forward with no backward (the reference's), so shard-by-shard
    arithmetic on parameters calls this first."""
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` as a full CPU tensor, on rank 0 (other ranks get
    an empty dict when sharded). A collective when sharded: every rank must call it."""
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

"""LoRA policies through PEFT, and a reference policy that costs no second model.

The policy is ``get_peft_model(base, LoraConfig(...))``: only the adapters train. The reference
is the same network with a second, frozen adapter named ``ref``, created as a copy of the
policy's adapter when training starts. LoRA's B matrices start at zero, so at that point the
reference equals the base model with adapters disabled (tested). A second adapter, not
``disable_adapter()``, because the reference must be able to move: ``RefPolicySync`` mixes the
policy's adapter weights into ``ref`` (hard copy or soft mix) without touching the base weights
(TRL refuses reference syncing with PEFT). Memory: one base model plus two adapters.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import PreTrainedModel

from plmods.models.weights import mix_tensors

__all__ = ["apply_lora", "is_lora", "add_reference_adapter", "reference_adapter", "adapter_tensors", "save_adapter"]

POLICY, REFERENCE = "default", "ref"


def apply_lora(model: PreTrainedModel, r: int, alpha: float, target_modules: list[str], dropout: float) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=int(r), lora_alpha=float(alpha), target_modules=list(target_modules), lora_dropout=float(dropout))
    return get_peft_model(model, config)


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and POLICY in getattr(model, "peft_config", {})


def add_reference_adapter(model: torch.nn.Module) -> None:
    """A frozen ``ref`` adapter holding a copy of the policy adapter's weights."""
    model.add_adapter(REFERENCE, copy.deepcopy(model.peft_config[POLICY]))
    ref, policy = adapter_tensors(model)
    mix_tensors(ref, policy, 1.0)
    model.set_adapter(POLICY)  # the policy's adapter trainable, the reference's frozen
    for tensor in ref:
        tensor.requires_grad_(False)


@contextlib.contextmanager
def reference_adapter(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model`` as the reference (the ``ref`` adapter active) inside the block."""
    model.set_adapter(REFERENCE, inference_mode=True)
    try:
        yield
    finally:
        model.set_adapter(POLICY)  # PEFT freezes inactive adapters and unfreezes the active one


def adapter_tensors(model: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Matching ``(ref, policy)`` adapter parameters, in the same order."""
    params = dict(model.named_parameters())
    ref, policy = [], []
    for name, tensor in params.items():
        if f".{POLICY}." in name and "lora_" in name:
            ref_name = name.replace(f".{POLICY}.", f".{REFERENCE}.")
            if ref_name in params:
                policy.append(tensor)
                ref.append(params[ref_name])
    return ref, policy


def save_adapter(model: torch.nn.Module, path: str, merged: bool = False) -> None:
    """The policy's adapter as a PEFT directory (``PeftModel.from_pretrained`` loads it); with
    ``merged``, also ``<path>/merged``: the adapter merged into a copy of the base weights, a
    plain transformers model."""
    model.save_pretrained(path, selected_adapters=[POLICY])
    if merged:
        full = copy.deepcopy(model)
        if REFERENCE in full.peft_config:
            full.delete_adapter(REFERENCE)
        full.merge_and_unload().save_pretrained(Path(path) / "merged")

"""The critic of PPO on language models (seed 003's value model): V(s_t) for every response token.

State s_t is the prompt and the first t response tokens; V(s_t) reads the hidden state of the
position that predicts token t (the same positions ``ResponseScorer`` scores). Two forms, chosen
by ``algo.critic``:

- ``ValueHead`` (``critic=value_head``): a linear head ``w^T h + b`` on the policy's own last hidden
  states. No second network and no second forward: the policy's scoring pass yields the hidden
  states, so the value loss trains the head and, through the shared trunk, the policy (with LoRA:
  the adapters and the head).
- ``CriticModel`` (``critic=critic_model``): a separate transformer trunk (the policy's weights by
  default, or ``path``: e.g. a reward model's directory, as in RLHF) with its own head and its own
  forward; with LoRA it trains adapters of its own plus the head.

The head starts at zero (V = 0): the value loss then moves it with an exact gradient from the
first step, and the policy trunk receives no value gradient until the head has grown. Either
critic is a submodule of the loss, so it is in the state dict (checkpoints, resume, DDP); under
FSDP its trunk and head are sharded like the policy. ``save`` writes ``value_head.safetensors``
(and, for a separate critic, its trunk as a transformers or PEFT directory); ``ValueHead(path=)``
and ``CriticModel(path=)`` load them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tensordict import TensorDictBase
from torch import nn

from plmods.errors import ConfigError
from plmods.models.scorer import ResponseScorer

__all__ = ["ValueHead", "CriticModel", "SharedTrunkCritic", "SeparateCritic", "HEAD_FILE", "load_value_head", "old_values"]

HEAD_FILE = "value_head.safetensors"


def _hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "hidden_size", None)
    if size is None:
        raise ConfigError(f"{type(model).__name__} has no config.hidden_size: a value head needs the width of its hidden states.")
    return int(size)


def _new_head(width: int) -> nn.Linear:
    head = nn.Linear(width, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def load_value_head(path: str | Path) -> nn.Linear:
    """The value head saved in ``<path>/value_head.safetensors``."""
    from safetensors.torch import load_file

    file = Path(path).expanduser() / HEAD_FILE
    if not file.is_file():
        raise ConfigError(f"path={str(path)!r} holds no {HEAD_FILE}: point it at a directory a PPO run saved its critic in.")
    state = load_file(str(file))
    head = nn.Linear(state["weight"].shape[1], 1)
    head.load_state_dict(state)
    return head


def _save_head(head: nn.Linear, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
    from safetensors.torch import save_file

    Path(path).mkdir(parents=True, exist_ok=True)
    tensors = state if state is not None else head.state_dict()
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(Path(path) / HEAD_FILE))


class SharedTrunkCritic(nn.Module):
    """V(s_t) = head(h_t) on the policy's hidden states (``ValueHead.build``)."""

    shares_trunk = True

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.head = head

    def values(self, batch: TensorDictBase, policy_hidden: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, T]`` values from the policy's hidden states ``[N, T, H]`` of this batch."""
        if policy_hidden is None:
            raise ValueError("a value head on the policy's trunk needs the policy's hidden states")
        return self.head(policy_hidden.float()).squeeze(-1)

    def shard(self, mesh) -> None:
        from torch.distributed.fsdp import fully_shard

        fully_shard(self.head, mesh=mesh)  # sharded too: nothing else would average its gradient

    def save(self, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
        """``<path>/value_head.safetensors`` (``state``: a gathered state dict, under FSDP)."""
        _save_head(self.head, path, None if state is None else {k.removeprefix("head."): v for k, v in state.items()})


class SeparateCritic(nn.Module):
    """V(s_t) = head(h_t) of its own trunk (``CriticModel.build``)."""

    shares_trunk = False

    def __init__(self, trunk: nn.Module, head: nn.Linear, scorer_like: ResponseScorer, lora: bool) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head
        # the trunk has no LM head: the scorer's hidden states are its last hidden state (not a
        # registered submodule: the trunk's weights are in the state dict once, as trunk.*)
        scorer = ResponseScorer(trunk, scorer_like.temperature, scorer_like.share_prompts, scorer_like.logits_chunk_size)
        object.__setattr__(self, "scorer", scorer)
        self.lora = lora

    def values(self, batch: TensorDictBase, policy_hidden: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.scorer.hidden(
            batch["input_ids"], batch["attention_mask"], batch["response_tokens"], batch["response_mask"], batch.get("prompt_group", None)
        )
        return self.head(hidden.float()).squeeze(-1)

    def shard(self, mesh) -> None:
        from torch.distributed.fsdp import fully_shard

        from plmods.models.sharding import shard_causal_lm

        shard_causal_lm(self.trunk, mesh)
        fully_shard(self.head, mesh=mesh)

    def save(self, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
        """The trunk as a transformers directory (a PEFT adapter directory with LoRA) plus
        ``value_head.safetensors``; ``state``: a gathered state dict under FSDP."""
        if state is not None:  # an unsharded twin is not needed: the trunk saves from a state dict
            trunk_state = {k.removeprefix("trunk."): v for k, v in state.items() if k.startswith("trunk.")}
            self.trunk.save_pretrained(str(path), state_dict=trunk_state)
            _save_head(self.head, path, {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")})
            return
        self.trunk.save_pretrained(str(path))
        _save_head(self.head, path)


class ValueHead:
    """``critic=value_head``: a value head on the policy's trunk.

    Args:
        path: a directory holding ``value_head.safetensors`` (a previous PPO run's saved policy)
            to start from; null: a new head at zero.
    """

    def __init__(self, path: str | None = None) -> None:
        if path is not None:
            load_value_head(path)  # a missing file is one line now, not after the policy loads
        self.path = path

    def build(self, policy: nn.Module, lm, seed: int, scorer: ResponseScorer) -> SharedTrunkCritic:
        head = load_value_head(self.path) if self.path is not None else _new_head(_hidden_size(policy))
        if head.in_features != _hidden_size(policy):
            raise ConfigError(f"critic.path={self.path!r} holds a value head for width {head.in_features}, the policy's is {_hidden_size(policy)}.")
        return SharedTrunkCritic(head)


class CriticModel:
    """``critic=critic_model``: a separate critic network.

    Args:
        path: a local transformers directory whose trunk (the model without its LM head) becomes
            the critic, e.g. a reward model's; with a ``value_head.safetensors`` beside it, that
            head too. Null: a copy of the policy's initial weights (``model.path``). It must share
            the policy's tokenizer (same vocabulary: it reads the same token ids).
    """

    def __init__(self, path: str | None = None) -> None:
        if path is not None and not (Path(path).expanduser() / "config.json").is_file():
            raise ConfigError(f"path={path!r} is not a saved transformers model (no config.json): point it at a local directory.")
        self.path = None if path is None else str(Path(path).expanduser())

    def build(self, policy: nn.Module, lm, seed: int, scorer: ResponseScorer) -> SeparateCritic:
        factory = lm if self.path is None else lm.with_path(self.path)
        causal = factory.build_base(seed)
        trunk = causal.base_model  # the decoder without its LM head
        vocab = getattr(getattr(policy, "config", None), "vocab_size", None)
        if vocab is not None and getattr(causal.config, "vocab_size", vocab) != vocab:
            raise ConfigError(
                f"critic.path={self.path!r} has a vocabulary of {causal.config.vocab_size} tokens, the policy's has {vocab}: "
                "the critic reads the policy's token ids, so it needs the same tokenizer."
            )
        del causal
        has_head = self.path is not None and (Path(self.path) / "value_head.safetensors").is_file()
        head = load_value_head(self.path) if has_head else _new_head(_hidden_size(trunk))
        lora = lm.lora["r"] > 0
        if lora:
            from plmods.models.lora import apply_lora

            trunk = apply_lora(trunk, **lm.lora)
        trunk.train(False)
        return SeparateCritic(trunk, head, scorer, lora)


@torch.no_grad()
def old_values(critic: nn.Module, actor: ResponseScorer, batch: TensorDictBase, micro_batch_size: int) -> torch.Tensor:
    """The critic's V(s_t) ``[N, T]`` at sampling time (V_old), ``micro_batch_size`` rows at a
    time, zero on padding. A value head reads ``actor``'s (the policy scorer's) hidden states."""
    # imported here: plmods.algos imports this module
    from plmods.algos.micro_batches import micro_batches

    out = []
    for micro in micro_batches(batch, micro_batch_size, group=False):  # rows stay in order
        hidden = None
        if critic.shares_trunk:
            hidden = actor.hidden(
                micro["input_ids"], micro["attention_mask"], micro["response_tokens"], micro["response_mask"], micro.get("prompt_group", None)
            )
        values = critic.values(micro, policy_hidden=hidden) * micro["response_mask"]
        out.append(nn.functional.pad(values, (0, batch["response_tokens"].shape[-1] - values.shape[-1])))
    return torch.cat(out, 0)

"""The collector -> Lightning bridge.

Lightning re-iterates the train DataLoader every epoch. Each ``iter()`` of this dataset yields
exactly one item: the next collected batch of its module, advantages already computed. So one
Lightning epoch is one policy iteration (one ``training_step`` that runs every minibatch update),
and ``max_epochs``, validation intervals, epoch-end callbacks and checkpoints keep the meaning an
RL user expects.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from tensordict import TensorDictBase
from torch.utils.data import DataLoader, IterableDataset

__all__ = ["IterationDataset", "iteration_loader"]


class BatchSource(Protocol):
    def next_batch(self) -> TensorDictBase: ...


class IterationDataset(IterableDataset):
    """One item per ``iter()``: ``source.next_batch()``, the data of one policy iteration."""

    def __init__(self, source: BatchSource) -> None:
        self.source = source

    def __iter__(self) -> Iterator[TensorDictBase]:
        yield self.source.next_batch()

    def __len__(self) -> int:
        return 1


def _identity(batch):
    return batch


def iteration_loader(source: BatchSource) -> DataLoader:
    """A DataLoader that hands the collected TensorDict to ``training_step`` unchanged.

    ``batch_size=None`` and an identity collate keep Lightning from re-batching; ``num_workers=0``
    because the collector lives in this process. The loader draws its per-epoch base seed from a
    private generator: drawing from the global RNG would shift every later sample of the policy
    and make a resumed run diverge from an uninterrupted one.
    """
    return DataLoader(
        IterationDataset(source),
        batch_size=None,
        collate_fn=_identity,
        num_workers=0,
        generator=torch.Generator(),
    )

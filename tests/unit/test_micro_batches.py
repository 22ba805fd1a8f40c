"""Micro-batches of a round: prompt groups made adjacent (stable), and each micro-batch trimmed to
the prompt columns its rows attend to and the response columns up to its longest response."""

import torch
from tensordict import TensorDict

from plmods.algos.micro_batches import micro_batches, trim

P, T = 4, 3


def _batch() -> TensorDict:
    # prompt columns 0..3 (left padding), response columns 4..6
    prompt_mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]])
    response_mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    return TensorDict(
        input_ids=torch.arange(4 * (P + T)).view(4, P + T),
        attention_mask=torch.cat([prompt_mask, response_mask.long()], -1),
        response_tokens=torch.arange(4 * T).view(4, T) + 100, response_mask=response_mask,
        old_log_probs=-torch.arange(4 * T, dtype=torch.float32).view(4, T), prompt_group=torch.tensor([1, 0, 1, 0]),
        batch_size=[4],
    )  # fmt: skip


def test_trim_keeps_the_used_prompt_columns_and_the_responses_up_to_the_longest():
    batch = _batch()[:2]  # prompt columns 1..3 used, responses of 2 and 1 tokens
    out = trim(batch)
    assert torch.equal(out["input_ids"], batch["input_ids"][:, 1 : P + 2])
    assert torch.equal(out["attention_mask"], batch["attention_mask"][:, 1 : P + 2])
    for key in ("response_tokens", "response_mask", "old_log_probs"):
        assert torch.equal(out[key], batch[key][:, :2]), key
    assert torch.equal(out["prompt_group"], batch["prompt_group"])  # per-row keys untouched
    assert batch["input_ids"].shape == (2, P + T)  # the input is not modified


def test_trim_of_rows_that_use_every_column_changes_nothing():
    batch = _batch()[3:]
    out = trim(batch)
    assert all(torch.equal(out[k], batch[k]) for k in batch.keys())  # noqa: SIM118


def test_micro_batches_put_prompt_groups_together_stably_unless_told_not_to():
    batch = _batch()
    grouped = micro_batches(batch, 2)
    assert [mb["prompt_group"].tolist() for mb in grouped] == [[0, 0], [1, 1]]
    assert [mb["response_tokens"][:, 0].tolist() for mb in grouped] == [[103, 109], [100, 106]]  # rows 1, 3 | 0, 2
    kept = micro_batches(batch, 3, group=False)
    assert [mb["prompt_group"].tolist() for mb in kept] == [[1, 0, 1], [0]]
    assert [mb.shape[0] for mb in kept] == [3, 1] and kept[1]["input_ids"].shape == (1, P + T)

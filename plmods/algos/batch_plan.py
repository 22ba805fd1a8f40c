"""The batch-size arithmetic of one policy iteration, per rank and over all ranks, as one table.

Every plmods size setting is *per rank*: each rank collects ``frames_per_batch`` frames (or
samples ``prompts_per_batch x group_size`` completions) and takes the same optimizer steps on its
own minibatches; the gradient of a step is the mean over ranks, so a step sees ``world_size``
minibatches in all. ``train.py`` logs this table at start-up (rank 0); a module's ``batch_plan``
gives it to any Lightning project.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BatchPlan"]


@dataclass
class BatchPlan:
    """Rows of ``(quantity, per rank, all ranks)``; ``notes`` follow the table."""

    world_size: int
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, quantity: str, per_rank: int | str, summed: bool = True) -> None:
        """A row; ``summed``: the all-ranks column is ``per_rank x world_size`` (else the same)."""
        total = per_rank * self.world_size if summed and isinstance(per_rank, int) else per_rank
        self.rows.append((quantity, f"{per_rank:,}" if isinstance(per_rank, int) else per_rank,
                          f"{total:,}" if isinstance(total, int) else total))  # fmt: skip

    def table(self) -> str:
        header = ("quantity", "per rank", f"{self.world_size} rank{'s' if self.world_size > 1 else ''}")
        rows = [header, *self.rows]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}" for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(["batch plan (one iteration):", *lines, *self.notes])

    def as_dict(self) -> dict[str, list[str]]:
        return {quantity: [per_rank, total] for quantity, per_rank, total in self.rows}

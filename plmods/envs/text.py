"""Text tasks with verifiable answers: the prompt sources of the language algorithms.

A task draws problems as dicts: ``prompt`` (the user message, wrapped by the tokenizer's chat
template), plus whatever fields its reward functions read (``answer``, ``numbers``, ...). Every
field but ``prompt`` reaches reward functions as a keyword argument. A fixed held-out set (never
drawn for training) measures accuracy; ``demonstration`` gives the supervised warm-up's target.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from plmods.errors import require

__all__ = ["TextTask", "AdditionTask", "CountdownTask"]


class TextTask:
    """Base of the text tasks: held-out problems are excluded from training draws by key."""

    name = "text"
    solved_threshold: float | None = None  # held-out accuracy at which a run counts as solved

    def draw(self, rng: random.Random) -> dict[str, Any]:
        """One problem (possibly a held-out one)."""
        raise NotImplementedError

    def demonstration(self, problem: dict[str, Any]) -> str:
        """A correct completion of ``problem`` (the SFT target)."""
        raise NotImplementedError

    def heldout(self, n: int, seed: int) -> list[dict[str, Any]]:
        """``n`` distinct problems drawn with ``seed``; the same list for the same arguments."""
        rng, seen, out = random.Random(seed), set(), []
        for _ in range(100 * n):
            problem = self.draw(rng)
            if problem["prompt"] not in seen:
                seen.add(problem["prompt"])
                out.append(problem)
                if len(out) == n:
                    return out
        raise ValueError(f"{self.name}: could not draw {n} distinct held-out problems; the task is too small.")

    def exclude(self, problems: list[dict[str, Any]]) -> None:
        """Never draw these problems for training (the held-out set)."""
        self._excluded = {p["prompt"] for p in problems}

    @property
    def excluded(self) -> frozenset[str]:
        """Prompts never drawn for training (the held-out set)."""
        return frozenset(getattr(self, "_excluded", ()))

    def demonstrations(self, n: int, rng: random.Random) -> list[tuple[str, str]]:
        """Up to ``n`` ``(prompt, completion)`` pairs of training problems with a correct
        completion (problems without a demonstration, e.g. unsolvable Countdowns, are skipped):
        what a supervised warm-up trains on."""
        pairs = [(p["prompt"], self.demonstration(p)) for p in self.sample(n, rng)]
        return [(q, a) for q, a in pairs if a]

    def settings(self) -> dict[str, Any]:
        """The task's public settings (what identifies its problems)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def sample(self, n: int, rng: random.Random) -> list[dict[str, Any]]:
        """``n`` training problems (held-out prompts are redrawn)."""
        excluded = getattr(self, "_excluded", set())
        out = []
        while len(out) < n:
            problem = self.draw(rng)
            if problem["prompt"] not in excluded:
                out.append(problem)
        return out


class AdditionTask(TextTask):
    """``a+b`` for non-negative integers of at most ``digits`` digits; the answer is the sum.

    Args:
        digits: largest operand has this many digits.
        solved_threshold: held-out accuracy that counts as solved (early stopping), or null.
        prompt_template: the user message, with ``{a}`` and ``{b}`` (the compact ``{a}+{b}=`` suits
            the tiny character model; an instruct model reads a sentence better).
    """

    name = "addition"

    def __init__(self, digits: int = 2, solved_threshold: float | None = None, prompt_template: str = "{a}+{b}=") -> None:
        require(1 <= digits <= 9, f"digits must be in 1..9, got {digits}.")
        require("{a}" in prompt_template and "{b}" in prompt_template, f"prompt_template must contain {{a}} and {{b}}, got {prompt_template!r}.")
        self.digits = digits
        self.solved_threshold = solved_threshold
        self.prompt_template = prompt_template

    def draw(self, rng: random.Random) -> dict[str, Any]:
        high = 10**self.digits - 1
        a, b = rng.randint(0, high), rng.randint(0, high)
        return {"prompt": self.prompt_template.format(a=a, b=b), "answer": str(a + b)}

    def demonstration(self, problem: dict[str, Any]) -> str:
        return problem["answer"]


_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


class CountdownTask(TextTask):
    """Countdown: combine the given numbers (each at most once) with ``+ - *`` to reach a target.

    Problems come from torchrl's offline Countdown generator (``CountdownEnv``'s problem source),
    shown in a compact prompt the tiny models can read: ``"3 7 5>26"``. Completions are steps, one
    per line (``"7*3=21\\n21+5=26"``), so step-level (process) rewards can score each line.

    Args:
        num_count: numbers per problem.
        max_number: numbers are drawn from 1..max_number.
        max_target: targets above this fall back to the sum of the numbers.
        solved_threshold: held-out accuracy that counts as solved, or null.
    """

    name = "countdown"

    def __init__(
        self, num_count: int = 3, max_number: int = 10, max_target: int = 100, solved_threshold: float | None = None
    ) -> None:
        require(2 <= num_count <= 5, f"env.num_count must be in 2..5, got {num_count}.")
        require(max_number >= 1, f"env.max_number must be >= 1, got {max_number}.")
        self.num_count = num_count
        self.max_number = max_number
        self.max_target = max_target
        self.solved_threshold = solved_threshold

    def draw(self, rng: random.Random) -> dict[str, Any]:
        from torchrl.envs.llm.datasets.countdown import _CountdownProblemGenerator

        # torchrl's generator (private in 0.14, pinned): reachable targets by random left folds
        generator = _CountdownProblemGenerator(self.num_count, self.max_number, self.max_target)
        generator.rng = rng
        numbers = [rng.randint(1, self.max_number) for _ in range(self.num_count)]
        target = generator._make_target(numbers)
        prompt = " ".join(map(str, numbers)) + f">{target}"
        return {"prompt": prompt, "numbers": numbers, "target": target, "answer": str(target)}

    def demonstration(self, problem: dict[str, Any]) -> str:
        steps = solve_countdown(problem["numbers"], problem["target"])
        return "\n".join(steps) if steps is not None else ""  # "": no demonstration (skipped)


def solve_countdown(numbers: list[int], target: int) -> list[str] | None:
    """Shortest step list ``"a op b=c"`` folding some of ``numbers`` into ``target`` without
    negative intermediate results (brute force: the tasks here have at most 5 numbers). Each step
    combines the running value with a new number, on either side; None when no fold reaches it."""
    if target in numbers:
        return [str(target)]  # a bare number line: "use this number"
    for size in range(2, len(numbers) + 1):
        for perm in itertools.permutations(numbers, size):
            for ops in itertools.product("+-*", repeat=size - 1):
                for sides in itertools.product((0, 1), repeat=size - 1):
                    value, steps = perm[0], []
                    for n, op, swap in zip(perm[1:], ops, sides, strict=True):
                        a, b = (n, value) if swap else (value, n)
                        value = _OPS[op](a, b)
                        steps.append(f"{a}{op}{b}={value}")
                        if value < 0:  # Countdown forbids negative intermediate results
                            break
                    if value == target and len(steps) == size - 1:
                        return steps
    return None

"""Programs of the search lane as values: a chain of parameterised steps and a learned final step,
with the readable text and the simplicity cost the ranking uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..grids import Grid


@dataclass(frozen=True)
class Step:
    """One grid -> grid transformation with its parameters already read from the demos."""

    name: str
    args: tuple[tuple[str, object], ...]
    cost: float
    fn: Callable[[Grid], Grid | None] = field(compare=False, repr=False)

    def text(self) -> str:
        if not self.args:
            return self.name
        return f"{self.name}(" + ",".join(f"{k}={v}" for k, v in self.args) + ")"


def step(name: str, cost: float, fn: Callable[[Grid], Grid | None], **args: object) -> Step:
    return Step(name, tuple(args.items()), cost, fn)


@dataclass(frozen=True)
class Program:
    steps: tuple[Step, ...]
    final: str  # the learned final step's text ("" when the steps alone reproduce the outputs)
    final_cost: float

    @property
    def cost(self) -> float:
        return sum(s.cost for s in self.steps) + self.final_cost

    def text(self) -> str:
        parts = [s.text() for s in self.steps] + ([self.final] if self.final else [])
        return " | ".join(parts) if parts else "identity"

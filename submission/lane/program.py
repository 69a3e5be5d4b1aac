"""Programs of the search lane as values: a chain of parameterised steps and a learned final step,
with the readable text and the simplicity cost the ranking uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from submission.arc.grids import Grid


@dataclass(frozen=True)
class Step:
    """One grid -> grid transformation with its parameters already read from the demos."""

    name: str
    args: tuple[tuple[str, object], ...]
    cost: float
    fn: Callable[[Grid], Grid | None] = field(compare=False, repr=False)
    first_only: bool = False  # offered only on the task's own inputs (no step before it)
    # "dihedral" for the 8 symmetries; "equivariant" for steps that commute with them up to a
    # change of their own parameters (so never needed right after a dihedral step)
    kind: str = ""

    def text(self) -> str:
        if not self.args:
            return self.name
        return f"{self.name}(" + ",".join(f"{k}={v}" for k, v in self.args) + ")"


def step(name: str, cost: float, fn: Callable[[Grid], Grid | None], first_only: bool = False,
         kind: str = "", **args: object) -> Step:
    return Step(name, tuple(args.items()), cost, fn, first_only, kind)


def allowed_after(prev: Step | None, nxt: Step) -> bool:
    """Pruning by algebra: no step after a first-only step's place, no dihedral after a dihedral
    (their composition is one dihedral), no equivariant step right after a dihedral."""
    if prev is None:
        return True
    if nxt.first_only:
        return False
    return not (prev.kind == "dihedral" and nxt.kind in ("dihedral", "equivariant"))


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

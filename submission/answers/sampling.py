"""Sampling interface shared by the vLLM and transformers backends, and the views of a test input.

A `GenRequest` is one prompt (token ids) under one adapter (or none: the base model); a backend returns,
per request, its generations as (token ids, summed logprob). `build_views` makes the augmented prompts
of one test input, `collect_samples` parses and inverts what came back. Backends live in `backends/`;
this module imports neither vLLM nor torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from submission.arc.augment import Transform, sample_transforms, view_transforms
from submission.arc.fit import fit_pairs, ordered_pairs
from submission.arc.formats import TextFormat
from submission.arc.grids import Grid, Task
from submission.answers.select import Sample


@dataclass(frozen=True)
class Adapter:
    """A saved PEFT adapter, named as vLLM's LoRARequest wants (int_id >= 1; 0 means no LoRA)."""

    name: str
    int_id: int
    path: str


@dataclass(frozen=True)
class GenRequest:
    prompt: tuple[int, ...]
    adapter: Adapter | None
    max_tokens: int
    n: int = 1
    temperature: float = 0.0  # 0: greedy
    top_logprobs: int = 0  # also return the k most likely tokens at every generated position


@dataclass(frozen=True)
class VerifyRequest:
    """A draft answer to check after `prompt`: the top-k logprobs at each of its positions. The
    caller already holds the rows of the first `known` positions (an earlier draft with the same
    prefix): the sampler may leave them uncomputed (read from its prefix cache)."""

    prompt: tuple[int, ...]
    answer: tuple[int, ...]
    adapter: Adapter | None
    top_logprobs: int
    known: int = 0


class Generation(NamedTuple):
    ids: list[int]  # generated token ids
    logprob: float  # their summed log-probability
    top: list[dict[int, float]] | None = None  # per position: token id -> logprob (top_logprobs)


class Sampler(Protocol):
    name: str

    def generate(self, requests: list[GenRequest]) -> list[list[Generation]]: ...

    def score(self, prompt: list[int], answer: list[int], adapter: Adapter | None) -> float:
        """Total log-probability of `answer` following `prompt`."""
        ...

    def verify(self, requests: list[VerifyRequest]) -> list[list[dict[int, float]] | None]:
        """Per request, per answer position: token id -> logprob for the `top_logprobs` most
        likely tokens and the answer's own token (as `Generation.top`); None where the rows
        cannot be proven computed (the search then decodes that path)."""
        ...


class Heartbeat:
    """The base of the model samplers: `beat()` after every finished request or scoring call
    reaches the callable `set_beat` gave (none before)."""

    _beat: Callable[[], None] | None = None

    def set_beat(self, beat: Callable[[], None]) -> None:
        """Send every heartbeat from now on to `beat`."""
        self._beat = beat

    def beat(self) -> None:
        if self._beat is not None:
            self._beat()


@dataclass(frozen=True)
class View:
    task_id: str
    test_index: int
    index: int
    transform: Transform
    prompt: tuple[int, ...]
    test_input: Grid | None = field(default=None, compare=False, repr=False)  # original frame


def build_views(task: Task, test_index: int, fmt: TextFormat, rng: np.random.Generator, *,
                n_views: int, max_len: int, answer_tokens: int, keep_background: bool = True,
                shuffle_order: bool = True, extra: bool = False, first_index: int = 0
                ) -> tuple[list[View], int]:
    """Prompts of one test input under `n_views` transforms (the standard views, or with `extra`
    random further ones, numbered from `first_index`); demos are dropped from the front when a
    prompt plus its expected answer would not fit. Returns (views, demos dropped in total)."""
    views, dropped = [], 0
    n = len(task.train)
    if extra:
        transforms = sample_transforms(rng, n_views, n, keep_background=keep_background,
                                       shuffle_order=shuffle_order and n > 1, include_identity=False)
    else:
        transforms = view_transforms(rng, n_views, n, keep_background=keep_background,
                                     shuffle_order=shuffle_order)
    for i, t in enumerate(transforms, start=first_index):
        fitted = fit_pairs(fmt, ordered_pairs(t, task.train), query=t.apply_grid(task.test_inputs[test_index]),
                           max_len=max_len, answer_tokens=answer_tokens, overlong="keep")
        dropped += fitted.dropped
        views.append(View(task.id, test_index, i, t, tuple(fitted.ids), task.test_inputs[test_index]))
    return views, dropped


def answer_budget(task: Task, test_index: int, fmt: TextFormat) -> int:
    """max_tokens for an answer: the largest grid the demos suggest (their largest output, or the
    test input scaled by the demos' largest output/input ratio, e.g. 3x for tilings), plus a margin,
    square because views may transpose, capped at 30x30."""
    test = task.test_inputs[test_index].shape
    side = max(max(p.output.shape) for p in task.train)
    for p in task.train:
        ratio = max(p.output.shape[0] / p.input.shape[0], p.output.shape[1] / p.input.shape[1])
        side = max(side, int(np.ceil(max(test) * ratio)))
    side = min(30, side + 2)
    return fmt.max_answer_tokens(side, side)


def collect_samples(view: View, generations: list[Generation], fmt: TextFormat,
                    from_base: bool = False) -> list[Sample]:
    """Parse each generation and map it back to the original frame (None where it does not parse)."""
    out = []
    for ids, logprob, _ in generations:
        grid = fmt.parse(ids)
        if grid is not None:
            grid = view.transform.invert_grid(grid)
        out.append(Sample(view=view.index, group=view.transform.dihedral, grid=grid,
                          logprob=float(logprob), from_base=from_base))
    return out

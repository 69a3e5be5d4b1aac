"""Test-time-training data for one task: leave-one-out sequences under random augmentations.

Each sample puts one demonstration last as the query and the others before it as context, all under
one random transform (D8 x colour permutation x demo order); the loss covers every demo output and the
query output (the format's mask). Samples are distinct by transform, capped at `max_samples`; a sample
over the token limit loses context demos from the front, and one that cannot fit is counted, never
silently dropped. This module builds token ids only; it does not train.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from submission.arc.augment import Transform, random_colour_perm
from submission.arc.fit import fit_pairs, ordered_pairs
from submission.arc.formats import TextFormat
from submission.arc.grids import Task


@dataclass(frozen=True)
class TrainSample:
    ids: list[int]
    mask: list[bool]  # True where the token is a training target
    transform: Transform
    query: int  # index of the demo used as the query
    dropped_demos: int  # context demos removed to fit the token limit


@dataclass
class TTTData:
    samples: list[TrainSample] = field(default_factory=list)
    duplicates: int = 0  # transforms drawn twice and skipped
    shortened: int = 0  # samples that lost context demos to fit
    too_long: int = 0  # samples whose query alone exceeds the limit (skipped, counted)

    @property
    def tokens(self) -> int:
        return sum(len(s.ids) for s in self.samples)

    def stats(self) -> dict[str, int]:
        return {"samples": len(self.samples), "tokens": self.tokens, "duplicates": self.duplicates,
                "shortened": self.shortened, "too_long": self.too_long}


def build_ttt_data(task: Task, fmt: TextFormat, rng: np.random.Generator, *, max_samples: int,
                   max_len: int, keep_background: bool = True,
                   skip_first_output: bool = False) -> TTTData:
    """Up to `max_samples` distinct augmented leave-one-out samples of `task`'s demonstrations."""
    n = len(task.train)
    data, seen = TTTData(), set()
    attempts, max_attempts = 0, max(20 * max_samples, 100)
    while len(data.samples) < max_samples and attempts < max_attempts:
        query = attempts % n
        attempts += 1
        if attempts == 1:  # the task as given comes first
            query = n - 1
            transform = Transform(order=tuple(range(n)))
        else:
            others = [int(i) for i in rng.permutation([i for i in range(n) if i != query])]
            transform = Transform(dihedral=int(rng.integers(8)),
                                  colours=random_colour_perm(rng, keep_background),
                                  order=tuple(others) + (query,))
        if transform in seen:
            data.duplicates += 1
            continue
        seen.add(transform)
        sample = _encode(task, fmt, transform, query, max_len, skip_first_output)
        if sample is None:
            data.too_long += 1
        else:
            data.shortened += sample.dropped_demos > 0
            data.samples.append(sample)
    return data


def _encode(task: Task, fmt: TextFormat, transform: Transform, query: int, max_len: int,
            skip_first: bool) -> TrainSample | None:
    fitted = fit_pairs(fmt, ordered_pairs(transform, task.train), max_len=max_len,
                       skip_first=skip_first, overlong="none")
    if fitted is None:
        return None
    assert fitted.mask is not None
    return TrainSample(fitted.ids, fitted.mask, transform, query, fitted.dropped)

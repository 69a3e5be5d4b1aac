"""How a task's pairs become one sequence that fits the token budget.

`ordered_pairs` applies a transform to a list of pairs in the transform's demo order (the order
every prompt and training text is written in). `fit_pairs` encodes them, as a prompt before a query
or as a training text, and drops pairs from the front until the sequence, plus the tokens reserved
for an answer, fits `max_len`; at least one pair is always kept. What happens when even one pair
does not fit is the caller's to say (`overlong`). TTT data, fine-tuning data, sampling views and
re-scoring all fit their sequences here. This module does not sample, train or choose transforms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, overload

from submission.arc.augment import Transform
from submission.arc.formats import TextFormat
from submission.arc.grids import Grid, Pair

Overlong = Literal["keep", "none"]


@dataclass(frozen=True)
class Fitted:
    ids: list[int]
    mask: list[bool] | None  # training texts: True where the token is a target; prompts: None
    dropped: int  # pairs removed from the front
    fits: bool  # False only under overlong="keep": one pair left and still over the budget


def ordered_pairs(transform: Transform, pairs: Sequence[Pair]) -> list[Pair]:
    """`pairs` under `transform`, in its demo order: item i is `pairs[order[i]]` transformed
    (order None: as given)."""
    order = transform.order if transform.order is not None else range(len(pairs))
    return [transform.apply_pair(pairs[j]) for j in order]


@overload
def fit_pairs(fmt: TextFormat, pairs: Sequence[Pair], *, max_len: int, overlong: Literal["keep"],
              query: Grid | None = None, answer_tokens: int = 0, skip_first: bool = False) -> Fitted: ...


@overload
def fit_pairs(fmt: TextFormat, pairs: Sequence[Pair], *, max_len: int, overlong: Literal["none"],
              query: Grid | None = None, answer_tokens: int = 0, skip_first: bool = False
              ) -> Fitted | None: ...


def fit_pairs(fmt: TextFormat, pairs: Sequence[Pair], *, max_len: int, overlong: Overlong,
              query: Grid | None = None, answer_tokens: int = 0, skip_first: bool = False
              ) -> Fitted | None:
    """`pairs` encoded with pairs dropped from the front, one at a time, until the ids plus
    `answer_tokens` fit in `max_len`; at least one pair is kept.

    With `query`, the pairs are demos and the ids a prompt ending where the answer starts
    (`fmt.encode_prompt`); without, they are a training text whose last pair is the query
    (`fmt.encode_training`, with a mask; `skip_first` leaves the first output out of the mask
    while more than one pair is kept). When the one pair left still does not fit: `overlong="keep"`
    returns it anyway (`fits` False), `overlong="none"` returns None."""
    if overlong not in ("keep", "none"):
        raise ValueError(f"overlong must be 'keep' or 'none', got {overlong!r}")
    if query is not None and skip_first:
        raise ValueError("skip_first is for training texts, not prompts")
    kept, dropped = list(pairs), 0
    while True:
        if query is not None:
            ids, mask = fmt.encode_prompt(kept, query), None
        else:
            ids, mask = fmt.encode_training(kept, skip_first=skip_first and len(kept) > 1)
        if len(ids) + answer_tokens <= max_len:
            return Fitted(ids, mask, dropped, True)
        if len(kept) <= 1:
            return Fitted(ids, mask, dropped, False) if overlong == "keep" else None
        kept, dropped = kept[1:], dropped + 1

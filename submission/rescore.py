"""Re-scoring: the log-probability of each top candidate under several augmented prompts.

For one test input, every candidate is scored under the same `n` transforms (identity first): the
transformed demos and query form the prompt, the transformed candidate the answer, and the scorer
returns the answer's total log p under the task's adapter. Also holds the start-up check that vLLM's
`prompt_logprobs` agree with a forward pass before they are trusted. Selection itself is select.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .augment import sample_transforms
from .formats import TextFormat
from .grids import Task
from .sample import Adapter, Sampler
from .select import Candidate


def rescore(task: Task, test_index: int, candidates: Sequence[Candidate], fmt: TextFormat,
            scorer: Sampler, adapter: Adapter | None, rng: np.random.Generator, *, n: int,
            max_len: int, keep_background: bool = True) -> int:
    """Fill `rescore_logprobs` of every candidate; returns the number of scorer calls."""
    if not candidates:
        return 0
    n_demos = len(task.train)
    transforms = sample_transforms(rng, n, n_demos, keep_background=keep_background,
                                   shuffle_order=n_demos > 1, include_identity=True)
    calls = 0
    for c in candidates:
        c.rescore_logprobs = []
    for t in transforms:
        order = t.order if t.order is not None else tuple(range(n_demos))
        demos = [t.apply_pair(task.train[j]) for j in order]
        query = t.apply_grid(task.test_inputs[test_index])
        for c in candidates:
            answer = fmt.encode_answer(t.apply_grid(c.grid))
            prompt = fitted_prompt(fmt, demos, query, len(answer), max_len)
            c.rescore_logprobs.append(scorer.score(prompt, answer, adapter))
            calls += 1
    return calls


def fitted_prompt(fmt: TextFormat, demos: Sequence, query, answer_len: int, max_len: int) -> list[int]:
    """The prompt of `demos` + `query`, demos dropped from the front until an answer of
    `answer_len` tokens fits in `max_len` (at least one demo is kept)."""
    kept = list(demos)
    prompt = fmt.encode_prompt(kept, query)
    while len(prompt) + answer_len > max_len and len(kept) > 1:
        kept = kept[1:]
        prompt = fmt.encode_prompt(kept, query)
    return prompt


def scores_agree(a: Sampler, b: Sampler, prompt: list[int], answer: list[int],
                 adapter: Adapter | None, *, tol: float = 1e-3) -> tuple[bool, float, float]:
    """(agree, score of a, score of b) on one prompt: |a - b| <= tol * max(1, |b|)."""
    sa, sb = a.score(prompt, answer, adapter), b.score(prompt, answer, adapter)
    return abs(sa - sb) <= tol * max(1.0, abs(sb)), sa, sb

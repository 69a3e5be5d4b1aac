"""The answer search's entry point: plain DFS (`dfs.py`) or speculative DFS (`speculative.py`)
per request, and the rule that turns speculation off where it does not pay. Neither search is
implemented here.
"""

from __future__ import annotations

from submission.answers.dfs import SearchStats, dfs
from submission.answers.sampling import GenRequest, Generation, Sampler
from submission.answers.speculative import Frame, speculative_dfs

# Speculative search pays while other views' answers are taken: each wave of views waits for the
# earlier ones, so a test input whose views all disagree costs one more sequential decode of its
# longest answer (benchmarks/speculative_dfs.py: 2x the decode steps, the same decoded tokens)
# for nothing. After PROBE_PATHS answer paths, an engine whose speculative searches verified
# under MIN_ACCEPTED of them whole goes on with plain DFS (`speculative_pays`).
PROBE_PATHS = 128  # about one chunk: 8 tasks x 16 views
MIN_ACCEPTED = 0.2


def search(sampler: Sampler, requests: list[GenRequest], *, threshold: float, max_paths: int,
           stop_ids: list[int], frames: list[Frame | None] | None = None,
           stats: SearchStats | None = None) -> list[list[Generation]]:
    """Per greedy request: the greedy answer first, then every other complete answer with
    probability >= `threshold` (at most `max_paths` in all). Sampled requests (temperature > 0)
    and threshold <= 0 are plain generation. With `frames` (one per request, None for none) and
    a sampler that can `verify`, greedy requests that have a frame search speculatively."""
    if not requests:
        return []
    greedy = [i for i, r in enumerate(requests) if r.temperature == 0 and r.n == 1]
    if threshold <= 0 or not greedy:
        return sampler.generate(requests)
    spec = ([i for i in greedy if frames[i] is not None]
            if frames is not None and hasattr(sampler, "verify") else [])
    chosen = set(spec)
    plain = [i for i in greedy if i not in chosen]
    out = dfs(sampler, [requests[i] for i in plain], threshold, max_paths, stop_ids, stats)
    greedy = plain + spec
    if spec:
        out += speculative_dfs(sampler, [requests[i] for i in spec], [frames[i] for i in spec],
                               threshold, max_paths, stop_ids, stats)
    results: list[list[Generation]] = [[] for _ in requests]
    for i, gens in zip(greedy, out):
        results[i] = gens
    rest = [i for i in range(len(requests)) if i not in set(greedy)]  # temperature samples
    for i, gens in zip(rest, sampler.generate([requests[i] for i in rest]) if rest else []):
        results[i] = gens
    return results


def speculative_pays(totals: SearchStats) -> bool:
    """Whether speculative search goes on, given an engine's speculative searches so far: until
    PROBE_PATHS answer paths, then while at least MIN_ACCEPTED of them were verified whole."""
    return totals.paths < PROBE_PATHS or totals.drafts_accepted >= MIN_ACCEPTED * totals.paths

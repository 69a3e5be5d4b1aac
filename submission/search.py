"""Depth-first answer search: every answer whose probability reaches a threshold, not only the
greedy one (the 2024 and 2025 winners' DFS, p >= 0.17 / 0.2).

Built on plain batched generation: decode greedily with the top-k logprobs of every position, then
open a branch wherever another token keeps the running probability at or above the threshold, and
decode each branch greedily from there (prefix caching makes the shared prompt free). Repeating
until no branch is left finds every sequence above the threshold: such a sequence leaves the greedy
path of some round at a token whose prefix probability is already above the threshold, and no
token above the threshold ranks below 1/threshold, so k = ceil(1/threshold) alternatives suffice.
Each round is one batched `generate` call for all open branches of all prompts.
"""

from __future__ import annotations

import math
from dataclasses import replace

from .sample import GenRequest, Generation, Sampler


def search(sampler: Sampler, requests: list[GenRequest], *, threshold: float, max_paths: int,
           stop_ids: list[int]) -> list[list[Generation]]:
    """Per greedy request: the greedy answer first, then every other complete answer with
    probability >= `threshold` (at most `max_paths` in all). Sampled requests (temperature > 0)
    and threshold <= 0 are plain generation."""
    if not requests:
        return []
    greedy = [i for i, r in enumerate(requests) if r.temperature == 0 and r.n == 1]
    if threshold <= 0 or not greedy:
        return sampler.generate(requests)
    out = _dfs(sampler, [requests[i] for i in greedy], threshold, max_paths, stop_ids)
    results: list[list[Generation]] = [[] for _ in requests]
    for i, gens in zip(greedy, out):
        results[i] = gens
    rest = [i for i in range(len(requests)) if i not in set(greedy)]  # temperature samples
    for i, gens in zip(rest, sampler.generate([requests[i] for i in rest]) if rest else []):
        results[i] = gens
    return results


def _dfs(sampler: Sampler, requests: list[GenRequest], threshold: float, max_paths: int,
         stop_ids: list[int]) -> list[list[Generation]]:
    k = math.ceil(1.0 / threshold)
    floor, stops = math.log(threshold), set(stop_ids)
    found: list[list[Generation]] = [[] for _ in requests]
    opened = [1] * len(requests)  # paths started per request (the greedy one included)
    # (request index, prefix ids, prefix logprob); the first round is the greedy decode itself
    frontier: list[tuple[int, list[int], float]] = [(i, [], 0.0) for i in range(len(requests))]
    while frontier:
        batch = [replace(requests[i], prompt=requests[i].prompt + tuple(prefix), n=1,
                         temperature=0.0, top_logprobs=k,
                         max_tokens=requests[i].max_tokens - len(prefix))
                 for i, prefix, _ in frontier]
        nxt = []
        for (i, prefix, lp0), g in zip(frontier, sampler.generate(batch)):
            gen = g[0]
            ids, total = prefix + gen.ids, lp0 + gen.logprob
            if not found[i] or (total >= floor and ids and ids[-1] in stops):
                found[i].append(Generation(ids, total))
            running = lp0
            for pos, token in enumerate(gen.ids):
                alts = (gen.top or [{}] * len(gen.ids))[pos]
                for alt, alt_lp in sorted(alts.items(), key=lambda kv: -kv[1]):
                    if alt == token or running + alt_lp < floor or opened[i] >= max_paths:
                        continue
                    opened[i] += 1
                    branch = prefix + gen.ids[:pos] + [alt]
                    if alt in stops:  # the branch ends right here
                        found[i].append(Generation(branch, running + alt_lp))
                    elif len(branch) < requests[i].max_tokens:
                        nxt.append((i, branch, running + alt_lp))
                running += alts.get(token, 0.0)
                if running < floor:
                    break  # no later branch can reach the threshold
        frontier = nxt
    return found

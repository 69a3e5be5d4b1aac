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
import time
from dataclasses import dataclass, fields, replace

from submission.answers.sampling import GenRequest, Generation, Sampler


@dataclass
class SearchStats:
    """What a search cost. `paths`: answer paths searched (greedy ones and branches), of which
    `drafts_accepted` were verified whole; `decode_steps`: per generate call its longest
    generation, summed (the sequential steps of an engine with unlimited batch width);
    `decoded_tokens`: tokens generated (each one a step of its own sequence);
    `decode_context_tokens`: over every decoded token, the length of the sequence it attends to
    (what a decode step reads from the KV cache); `verify_tokens`: draft tokens checked by
    prefill after `verify_prompt_tokens` prompt tokens, of which `accepted_tokens` were taken as
    greedy tokens; `unverified`: drafts whose rows the sampler could not prove computed (those
    paths were decoded instead); `redrafts`: drafts made after a departure (`_redraft`);
    `generate_s`, `verify_s`: seconds in the sampler's calls. Sequential steps of an engine with
    unlimited batch width: `decode_steps + verify_calls`."""

    generate_calls: int = 0
    verify_calls: int = 0
    paths: int = 0
    decode_steps: int = 0
    decoded_tokens: int = 0
    decode_context_tokens: int = 0
    drafts: int = 0
    drafts_accepted: int = 0  # paths taken whole from a verified draft (no decoding)
    verify_prompt_tokens: int = 0
    verify_tokens: int = 0
    accepted_tokens: int = 0
    unverified: int = 0
    redrafts: int = 0
    generate_s: float = 0.0
    verify_s: float = 0.0

    def add(self, other: SearchStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_json(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def counted_generate(sampler: Sampler, batch: list[GenRequest], stats: SearchStats | None,
                     new_paths: bool = True) -> list[list[Generation]]:
    """`sampler.generate(batch)`, its costs added to `stats`; `new_paths`: the batch starts paths
    (False: it continues paths an earlier call started, which are not counted again)."""
    t0 = time.perf_counter()
    out = sampler.generate(batch)
    if stats is not None and batch:
        lengths = [len(g[0].ids) for g in out]
        stats.generate_s += time.perf_counter() - t0
        stats.generate_calls += 1
        stats.paths += len(batch) if new_paths else 0
        stats.decode_steps += max(lengths)
        stats.decoded_tokens += sum(lengths)
        stats.decode_context_tokens += sum(n * len(r.prompt) + n * (n - 1) // 2
                                           for r, n in zip(batch, lengths))
    return out


def dfs(sampler: Sampler, requests: list[GenRequest], threshold: float, max_paths: int,
         stop_ids: list[int], stats: SearchStats | None = None) -> list[list[Generation]]:
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
        for (i, prefix, lp0), g in zip(frontier, counted_generate(sampler, batch, stats)):
            gen = g[0]
            ids, total = prefix + gen.ids, lp0 + gen.logprob
            if not found[i] or (total >= floor and ids and ids[-1] in stops):
                found[i].append(Generation(ids, total))
            for branch, lp, ended in branches(prefix, lp0, gen, floor, stops, requests[i].max_tokens,
                                               max_paths - opened[i]):
                opened[i] += 1
                if ended:
                    found[i].append(Generation(branch, lp))
                elif ended is not None:
                    nxt.append((i, branch, lp))
        frontier = nxt
    return found


def branches(prefix: list[int], lp0: float, gen: Generation, floor: float, stops: set[int],
              max_tokens: int, room: int) -> list[tuple[list[int], float, bool | None]]:
    """The branches a decoded path opens, in the search's order: wherever another token keeps the
    running log p at or above `floor`, at most `room` of them. Each is (ids, log p, ended): True
    when the branch ends right there (a stop token), False when it is to be decoded further, None
    when it has no tokens left (opened and counted, never decoded)."""
    out: list[tuple[list[int], float, bool | None]] = []
    running = lp0
    for pos, token in enumerate(gen.ids):
        alts = (gen.top or [{}] * len(gen.ids))[pos]
        for alt, alt_lp in sorted(alts.items(), key=lambda kv: -kv[1]):
            if alt == token or running + alt_lp < floor or len(out) >= room:
                continue
            branch = prefix + gen.ids[:pos] + [alt]
            out.append((branch, running + alt_lp,
                        True if alt in stops else (False if len(branch) < max_tokens else None)))
        running += alts.get(token, 0.0)
        if running < floor:
            break  # no later branch can reach the threshold
    return out

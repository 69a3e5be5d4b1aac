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
from collections.abc import Callable, Hashable
from dataclasses import dataclass, fields, replace

import numpy as np

from submission.answers.sampling import GenRequest, Generation, Sampler, VerifyRequest

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
    out = _dfs(sampler, [requests[i] for i in plain], threshold, max_paths, stop_ids, stats)
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


def _dfs(sampler: Sampler, requests: list[GenRequest], threshold: float, max_paths: int,
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
        for (i, prefix, lp0), g in zip(frontier, _generate(sampler, batch, stats)):
            gen = g[0]
            ids, total = prefix + gen.ids, lp0 + gen.logprob
            if not found[i] or (total >= floor and ids and ids[-1] in stops):
                found[i].append(Generation(ids, total))
            for branch, lp, ended in _branches(prefix, lp0, gen, floor, stops, requests[i].max_tokens,
                                               max_paths - opened[i]):
                opened[i] += 1
                if ended:
                    found[i].append(Generation(branch, lp))
                elif ended is not None:
                    nxt.append((i, branch, lp))
        frontier = nxt
    return found


def _branches(prefix: list[int], lp0: float, gen: Generation, floor: float, stops: set[int],
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


# --- speculative DFS ----------------------------------------------------------------------------
# The same search (rounds, branch openings and their order per request, the `max_paths` cap) with
# one change: a path's greedy continuation is first looked up in answers other views of the same
# test input already found. Such a candidate, mapped into this view's frame and encoded as its
# answer tokens (a draft), is checked in one prefill (`Sampler.verify`: top-k logprobs at every
# answer position). Where the draft's token is the strict argmax at a position it is what greedy
# decoding would pick there; from the first position where it is not (an exact tie included: the
# decoder resolves ties itself), the row there names the greedy token (its strict argmax), and the
# path is drafted on from it (`_redraft`): the rest of the departed draft with that one token
# corrected, and the continuation of the path's latest n-gram earlier in prompt and path (prompt
# lookup). Each such round is one more prefill (the prompt and the accepted part read from the
# prefix cache), in place of one decode step per token; a path whose round gained fewer than
# MIN_GAIN tokens, or after REDRAFT_ROUNDS rounds, is decoded greedily from where it stands.
# Verified rows serve every path of the view whose prefix they cover (greedy path and branches).
REDRAFT_ROUNDS = 16
MIN_GAIN = 4  # tokens a round must add (the corrected one included) for another round
NGRAMS = (4, 2)  # lengths of the path's tail looked up in prompt and path, longest first


@dataclass(frozen=True)
class Frame:
    """Where a request's answers meet the other views of its test input: `group` names the test
    input, `wave` when the view starts (wave w after w iterations: later waves see more drafts),
    `to_key` maps answer ids to a key shared by the group (None: not an answer), `to_ids` maps a
    key to answer ids in this view's frame (None: no such answer here); `seeds`: keys to draft
    before any view has found one (e.g. the test input itself: many answers copy most of it),
    taken after every key a view found."""

    group: Hashable
    wave: int
    to_key: Callable[[list[int]], Hashable | None]
    to_ids: Callable[[Hashable], list[int] | None]
    seeds: tuple[Hashable, ...] = ()


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


def speculative_pays(totals: SearchStats) -> bool:
    """Whether speculative search goes on, given an engine's speculative searches so far: until
    PROBE_PATHS answer paths, then while at least MIN_ACCEPTED of them were verified whole."""
    return totals.paths < PROBE_PATHS or totals.drafts_accepted >= MIN_ACCEPTED * totals.paths


def _generate(sampler: Sampler, batch: list[GenRequest], stats: SearchStats | None
              ) -> list[list[Generation]]:
    t0 = time.perf_counter()
    out = sampler.generate(batch)
    if stats is not None and batch:
        lengths = [len(g[0].ids) for g in out]
        stats.generate_s += time.perf_counter() - t0
        stats.generate_calls += 1
        stats.paths += len(batch)
        stats.decode_steps += max(lengths)
        stats.decoded_tokens += sum(lengths)
        stats.decode_context_tokens += sum(n * len(r.prompt) + n * (n - 1) // 2
                                           for r, n in zip(batch, lengths))
    return out


def _accepted(ids: list[int], rows: list[dict[int, float]], start: int, budget: int,
              stops: set[int]) -> tuple[list[int], list[dict[int, float]], float, bool]:
    """Walk a verified draft from `start` while its token is the strict argmax: (tokens, their
    rows, summed log p, whether the path is complete: a stop token taken or `budget` reached)."""
    toks: list[int] = []
    tops: list[dict[int, float]] = []
    lp = 0.0
    for pos in range(start, len(ids)):
        if len(toks) >= budget:
            break
        row, t = rows[pos], ids[pos]
        lt = row.get(t)
        if lt is None or any(alt != t and v >= lt for alt, v in row.items()):
            break  # not the argmax, or tied with another token
        toks.append(t)
        tops.append(row)
        lp += lt
        if t in stops:
            return toks, tops, lp, True
    return toks, tops, lp, len(toks) >= budget


def speculative_dfs(sampler: Sampler, requests: list[GenRequest], frames: list[Frame],
                    threshold: float, max_paths: int, stop_ids: list[int],
                    stats: SearchStats | None = None) -> list[list[Generation]]:
    """`_dfs` with drafts from the other views of each request's group and from each path's own
    context (see above): the same answers in the same order."""
    k = math.ceil(1.0 / threshold)
    floor, stops = math.log(threshold), set(stop_ids)
    n = len(requests)
    found: list[list[Generation]] = [[] for _ in requests]
    opened = [1] * n
    rounds: list[list[tuple[list[int], float]]] = [[] for _ in requests]
    waves = sorted({f.wave for f in frames})
    start_at = [waves.index(f.wave) for f in frames]  # iteration at which each request starts
    known: dict[Hashable, dict[Hashable, int]] = {}  # group -> candidate key -> times found
    for f in frames:
        for key in f.seeds:
            known.setdefault(f.group, {}).setdefault(key, 0)
    ver = _Verifier(sampler, requests, k, stats)
    started = [False] * n
    stalled: set[Hashable] = set()  # groups whose drafts do not help: their views start at once
    it = 0
    while not all(started) or any(rounds):
        for i in range(n):
            if not started[i] and (start_at[i] <= it or frames[i].group in stalled):
                started[i] = True
                rounds[i] = [([], 0.0)]
        it += 1
        items = [(i, prefix, lp0) for i in range(n) for prefix, lp0 in rounds[i]]
        if not items:
            continue
        # 1. a draft for every path that no verified draft of its view covers yet: a candidate of
        #    its group, else its context's n-gram continuation
        checks: list[tuple[int, list[int], int]] = []
        for i, prefix, _ in items:
            if any(ids[:len(prefix)] == prefix and len(ids) > len(prefix) for ids, _ in ver.rows[i]):
                continue
            draft = _pick_draft(frames[i], known.get(frames[i].group, {}), prefix, ver.tried[i])
            if draft is None:
                draft = _lookup(ver.prompt(i), prefix, requests[i].max_tokens, ver.tried[i])
            if draft is not None:
                checks.append((i, draft, 0))
        ver.check(checks)
        # 2. each path: as far as verified drafts go, drafted on after each departure, then greedy
        #    decoding from there
        walks = [_walk(ver.rows[i], prefix, requests[i].max_tokens, stops) for i, prefix, _ in items]
        _redraft(ver, items, walks, requests, stops)
        helped: set[Hashable] = set()
        batch, where = [], []
        for idx, ((i, prefix, _), w) in enumerate(zip(items, walks)):
            if w.done:
                helped.add(frames[i].group)
            if stats is not None:
                stats.accepted_tokens += len(w.toks)
                stats.drafts_accepted += int(w.done)
                stats.paths += int(w.done)  # the decoded ones are counted by `_generate`
            if not w.done:
                where.append(idx)
                batch.append(replace(requests[i], prompt=requests[i].prompt + tuple(prefix + w.toks),
                                     n=1, temperature=0.0, top_logprobs=k,
                                     max_tokens=requests[i].max_tokens - len(prefix) - len(w.toks)))
        gens = [Generation(w.toks, w.lp, w.tops) for w in walks]
        for idx, g in zip(where, _generate(sampler, batch, stats) if batch else []):
            w, gen = walks[idx], g[0]
            top = gen.top or [{}] * len(gen.ids)
            gens[idx] = Generation(w.toks + gen.ids, w.lp + gen.logprob, w.tops + top)
        # 3. the round's bookkeeping, exactly as `_dfs`
        nxt: list[list[tuple[list[int], float]]] = [[] for _ in requests]
        for (i, prefix, lp0), gen in zip(items, gens):
            ids, total = prefix + gen.ids, lp0 + gen.logprob
            if not found[i] or (total >= floor and ids and ids[-1] in stops):
                found[i].append(Generation(ids, total))
            _note(known, frames[i], ids)  # below the threshold too: a greedy path other views take
            for branch, lp, ended in _branches(prefix, lp0, gen, floor, stops, requests[i].max_tokens,
                                               max_paths - opened[i]):
                opened[i] += 1
                if ended:
                    found[i].append(Generation(branch, lp))
                    _note(known, frames[i], branch)
                elif ended is not None:
                    nxt[i].append((branch, lp))
        rounds = nxt
        # a group with no answer to draft, or whose drafts this iteration were all rejected, stops
        # waiting: its later waves would only serialise their decoding
        for i in range(n):
            g = frames[i].group
            if started[i] and (not known.get(g) or g not in helped):
                stalled.add(g)
    return found


class _Verifier:
    """The drafts checked per request and their verified rows; one `Sampler.verify` call per
    `check`. A draft that extends a verified one past its first `known` positions reuses those
    rows (the same prefix: the same rows), and the sampler need only compute the rest."""

    def __init__(self, sampler: Sampler, requests: list[GenRequest], k: int,
                 stats: SearchStats | None) -> None:
        self.sampler, self.requests, self.k, self.stats = sampler, requests, k, stats
        self.rows: list[list[tuple[list[int], list[dict[int, float]]]]] = [[] for _ in requests]
        self.tried: list[set[tuple[int, ...]]] = [set() for _ in requests]
        self._prompts: dict[int, np.ndarray] = {}

    def prompt(self, i: int) -> np.ndarray:
        """Request i's prompt as an array (for n-gram lookups), made once."""
        if i not in self._prompts:
            self._prompts[i] = np.asarray(self.requests[i].prompt, dtype=np.int64)
        return self._prompts[i]

    def check(self, checks: list[tuple[int, list[int], int]],
              reuse: list[list[dict[int, float]]] | None = None) -> None:
        """Verify (request, draft, known) triples not tried yet; `reuse[j]` holds the first
        `known` rows of check j."""
        todo = [(j, c) for j, c in enumerate(checks) if tuple(c[1]) not in self.tried[c[0]]]
        if not todo:
            return
        for _, (i, d, _) in todo:
            self.tried[i].add(tuple(d))
        t0 = time.perf_counter()
        got = self.sampler.verify([VerifyRequest(self.requests[i].prompt, tuple(d),
                                                 self.requests[i].adapter, self.k, known)
                                   for _, (i, d, known) in todo])
        st = self.stats
        if st is not None:
            st.verify_s += time.perf_counter() - t0
            st.verify_calls += 1
            st.drafts += len(todo)
            st.verify_prompt_tokens += sum(len(self.requests[i].prompt) for _, (i, _, _) in todo)
            st.verify_tokens += sum(len(d) - known for _, (_, d, known) in todo)
        for (j, (i, d, known)), r in zip(todo, got):
            if r is None:
                if st is not None:
                    st.unverified += 1
                continue
            if known:
                assert reuse is not None
                r = reuse[j][:known] + list(r[known:])
            self.rows[i].append((d, r))


@dataclass
class _Walk:
    """A path's greedy continuation as far as verified rows go: its tokens, their rows and log p,
    whether it is complete, and the draft it ran along (None: none reaches its departure)."""

    toks: list[int]
    tops: list[dict[int, float]]
    lp: float
    done: bool
    draft: tuple[list[int], list[dict[int, float]]] | None


def _walk(verified: list[tuple[list[int], list[dict[int, float]]]], prefix: list[int],
          max_tokens: int, stops: set[int]) -> _Walk:
    """The longest walk (a complete one first) along the view's verified drafts from `prefix`."""
    best = _Walk([], [], 0.0, False, None)
    for ids, r in verified:
        if ids[:len(prefix)] == prefix and len(ids) > len(prefix):
            toks, tops, lp, done = _accepted(ids, r, len(prefix), max_tokens - len(prefix), stops)
            if done or len(toks) > len(best.toks) or best.draft is None:
                best = _Walk(toks, tops, lp, done, (ids, r))
            if done:
                break
    return best


def _redraft(ver: _Verifier, items: list[tuple[int, list[int], float]], walks: list[_Walk],
             requests: list[GenRequest], stops: set[int]) -> None:
    """Walk each unfinished path on past its departure: take the row's strict argmax there (the
    greedy token), then verify drafts for the rest (module comment above) in rounds, one verify
    call per round for all paths; `walks` are updated in place."""
    live = [idx for idx, w in enumerate(walks) if not w.done and w.draft is not None]
    for _ in range(REDRAFT_ROUNDS):
        checks: list[tuple[int, list[int], int]] = []
        reuse: list[list[dict[int, float]]] = []
        owner: list[int] = []
        before = {}
        for idx in live:
            i, prefix, _ = items[idx]
            w = walks[idx]
            assert w.draft is not None
            ids, rows = w.draft
            pos = len(prefix) + len(w.toks)  # the departure: rows[pos] is computed, ids[pos] lost
            if pos >= len(rows):
                continue
            row = rows[pos]
            top = max(row.values())
            best = [t for t, v in row.items() if v == top]
            if len(best) != 1:
                continue  # an exact tie: the decoder resolves it
            t = best[0]
            before[idx] = len(w.toks)
            w.toks, w.tops, w.lp = w.toks + [t], w.tops + [row], w.lp + row[t]
            w.draft = None
            path = prefix + w.toks
            if t in stops or len(path) >= requests[i].max_tokens:
                w.done = True
                continue
            left = requests[i].max_tokens - len(path)
            for cont in _continuations(ids, pos, ver.prompt(i), path, left):
                checks.append((i, path + cont, pos + 1))
                reuse.append(rows[:pos + 1])
                owner.append(idx)
        if ver.stats is not None:
            ver.stats.redrafts += len(checks)
        ver.check(checks, reuse)
        nxt = []
        for idx in dict.fromkeys(owner):
            i, prefix, _ = items[idx]
            w = _walk(ver.rows[i], prefix, requests[i].max_tokens, stops)
            if w.done or len(w.toks) > len(walks[idx].toks):
                walks[idx] = w
            if not walks[idx].done and walks[idx].draft is not None \
                    and len(walks[idx].toks) - before[idx] >= MIN_GAIN:
                nxt.append(idx)
        live = nxt
        if not live:
            return


def _continuations(ids: list[int], pos: int, prompt: np.ndarray, path: list[int],
                   left: int) -> list[list[int]]:
    """Drafts for the rest of a path that just took a corrected token at `pos`: the departed
    draft's own rest (one token was substituted), and the continuation of the path's latest
    n-gram earlier in prompt and path; at most `left` tokens each, distinct, non-empty."""
    out = []
    for cont in (ids[pos + 1:pos + 1 + left], _ngram(prompt, path, left)):
        if cont and cont not in out:
            out.append(cont)
    return out


def _ngram(prompt: np.ndarray, path: list[int], left: int) -> list[int]:
    """What followed the latest earlier occurrence of the last n tokens of prompt + path (n in
    NGRAMS, longest first), copied on with the occurrence's period where it runs into the tail
    (a run of one token, rows that repeat): `left` tokens, [] when no n-gram occurs."""
    ctx = np.concatenate([prompt, np.asarray(path, dtype=prompt.dtype)])
    for size in NGRAMS:
        if len(ctx) <= size or left <= 0:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(ctx[:-1], size)
        hits = np.flatnonzero((windows == ctx[-size:]).all(axis=1))
        if len(hits):
            start = int(hits[-1]) + size
            period = len(ctx) - start
            return ctx[start + np.arange(left) % period].tolist()
    return []


def _lookup(prompt: np.ndarray, prefix: list[int], max_tokens: int,
            tried: set[tuple[int, ...]]) -> list[int] | None:
    """A draft for a path with no candidate: `prefix` and its n-gram continuation (`_ngram`)."""
    cont = _ngram(prompt, prefix, max_tokens - len(prefix))
    draft = prefix + cont
    return draft if cont and tuple(draft) not in tried else None


def _note(known: dict[Hashable, dict[Hashable, int]], frame: Frame, ids: list[int]) -> None:
    key = frame.to_key(ids)
    if key is not None:
        group = known.setdefault(frame.group, {})
        group[key] = group.get(key, 0) + 1


def _pick_draft(frame: Frame, known: dict[Hashable, int], prefix: list[int],
                tried: set[tuple[int, ...]]) -> list[int] | None:
    """The most often found candidate of the group that extends `prefix` in this view's frame
    and was not checked for this view yet (first found first among equals)."""
    for key, _ in sorted(known.items(), key=lambda kv: -kv[1]):
        ids = frame.to_ids(key)
        if ids and len(ids) > len(prefix) and ids[:len(prefix)] == prefix and tuple(ids) not in tried:
            return list(ids)
    return None

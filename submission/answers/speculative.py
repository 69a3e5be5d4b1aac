"""Speculative DFS: `dfs.dfs`'s search with drafts verified by prefill in place of decoding.

The answers and their order are those of plain DFS (module comment below); this module does not
choose between the two searches (`search.search` does).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace

import numpy as np

from submission.answers.dfs import SearchStats, branches, counted_generate
from submission.answers.sampling import GenRequest, Generation, Sampler, VerifyRequest

# The same search as `dfs.dfs` (rounds, branch openings and their order, the `max_paths` cap); a
# path's greedy continuation is first drafted (an answer another view of the test input found, in
# this view's frame, else the path's n-gram continuation) and checked in one prefill
# (`Sampler.verify`). Tokens that are the strict argmax are taken; at a departure the row's argmax is
# taken and the path drafted on (`_redraft`) while a round gains MIN_GAIN tokens, at most
# REDRAFT_ROUNDS rounds; greedy decoding goes CHUNK tokens between drafts (`_decode`), doubling while
# drafts do not pay. Why, and the measurements: docs/method.md#speculative-answer-search.
REDRAFT_ROUNDS = 16
CHUNK = 2  # benchmarks/speculative_dfs.py: 8 -> 2 took agreeing views from 12 to 8 steps, noise too
MIN_GAIN = 4  # tokens a round must add (the corrected one included) for another round
NGRAM_SIZES = (2, 32)  # the shortest and longest tail of prompt + path that `_ngram` looks up


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
    """`dfs.dfs` with drafts from the other views of each request's group and from each path's own
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
        for (i, prefix, _), w in zip(items, walks):
            if w.done:
                helped.add(frames[i].group)
            if stats is not None:
                stats.accepted_tokens += len(w.toks)
                stats.drafts_accepted += int(w.done)
                stats.paths += int(w.done)  # the decoded ones are counted by `counted_generate`
        _decode(ver, items, walks, frames, known, stops)
        gens = [Generation(w.toks, w.lp, w.tops) for w in walks]
        # 3. the round's bookkeeping, exactly as `dfs.dfs`
        nxt: list[list[tuple[list[int], float]]] = [[] for _ in requests]
        for (i, prefix, lp0), gen in zip(items, gens):
            ids, total = prefix + gen.ids, lp0 + gen.logprob
            if not found[i] or (total >= floor and ids and ids[-1] in stops):
                found[i].append(Generation(ids, total))
            _note(known, frames[i], ids)  # below the threshold too: a greedy path other views take
            for branch, lp, ended in branches(prefix, lp0, gen, floor, stops, requests[i].max_tokens,
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
    """The drafts checked per request and their verified rows (one `Sampler.verify` call per
    `check`); a draft extending a verified one past `known` positions reuses those rows."""

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
    """Walk each unfinished path on past its departure: take the row's strict argmax there, then
    verify drafts for the rest in rounds, one call per round for all; `walks` updated in place."""
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
            if not row:
                continue  # a row the caller held: never read
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


def _decode(ver: _Verifier, items: list[tuple[int, list[int], float]], walks: list[_Walk],
            frames: list[Frame], known: dict[Hashable, dict[Hashable, int]], stops: set[int]) -> None:
    """Decode every unfinished walk greedily to its end, in place: CHUNK tokens per `generate`
    call for all of them, then one `verify` call for their drafts (module comment above)."""
    requests, st = ver.requests, ver.stats
    live = [idx for idx, w in enumerate(walks) if not w.done]
    chunk = dict.fromkeys(live, CHUNK)
    first = True
    while live:
        batch = []
        for idx in live:
            i, prefix, _ = items[idx]
            path = prefix + walks[idx].toks
            batch.append(replace(requests[i], prompt=requests[i].prompt + tuple(path), n=1,
                                 temperature=0.0, top_logprobs=ver.k,
                                 max_tokens=min(chunk[idx], requests[i].max_tokens - len(path))))
        outs = counted_generate(ver.sampler, batch, st, new_paths=first)
        first = False
        checks: list[tuple[int, list[int], int]] = []
        reuse: list[list[dict[int, float]]] = []
        drafted = []
        for idx, req, g in zip(live, batch, outs):
            i, prefix, _ = items[idx]
            w, gen = walks[idx], g[0]
            w.toks, w.lp = w.toks + gen.ids, w.lp + gen.logprob
            w.tops = w.tops + (gen.top or [{}] * len(gen.ids))
            path = prefix + w.toks
            if len(gen.ids) < req.max_tokens or (gen.ids and gen.ids[-1] in stops) \
                    or len(path) >= requests[i].max_tokens:
                w.done = True  # a stop token, or the budget: where one generate call ends too
                continue
            draft = _pick_draft(frames[i], known.get(frames[i].group, {}), path, ver.tried[i])
            if draft is None:
                draft = _lookup(ver.prompt(i), path, requests[i].max_tokens, ver.tried[i])
            if draft is None:
                chunk[idx] *= 2
                continue
            checks.append((i, draft, len(path)))
            reuse.append([{}] * len(prefix) + w.tops)  # rows before the walk: held, never read
            drafted.append(idx)
        ver.check(checks, reuse)
        subs = [(items[idx][0], items[idx][1] + walks[idx].toks, 0.0) for idx in drafted]
        sub = [_walk(ver.rows[i], path, requests[i].max_tokens, stops) for i, path, _ in subs]
        _redraft(ver, subs, sub, requests, stops)
        for idx, s in zip(drafted, sub):
            w = walks[idx]
            w.toks, w.tops, w.lp, w.done = w.toks + s.toks, w.tops + s.tops, w.lp + s.lp, s.done
            chunk[idx] = CHUNK if len(s.toks) >= MIN_GAIN else 2 * chunk[idx]
            if st is not None:
                st.accepted_tokens += len(s.toks)
        live = [idx for idx in live if not walks[idx].done]


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
    """What followed the latest earlier occurrence of the longest tail (NGRAM_SIZES) of prompt +
    path that occurred before, copied on with its period (a repeated row, not a run inside it):
    `left` tokens, [] when not even the shortest tail occurred."""
    ctx = np.concatenate([prompt, np.asarray(path, dtype=prompt.dtype)])
    low, high = NGRAM_SIZES
    high = min(high, len(ctx) - 1)
    if left <= 0 or high < low:
        return []

    def latest(size: int) -> int | None:
        windows = np.lib.stride_tricks.sliding_window_view(ctx[:-1], size)
        hits = np.flatnonzero((windows == ctx[-size:]).all(axis=1))
        return int(hits[-1]) if len(hits) else None

    best = latest(low)
    if best is None:
        return []
    size = low
    while low < high:  # a tail that occurred has every shorter tail occur: bisect the longest
        mid = (low + high + 1) // 2
        hit = latest(mid)
        if hit is None:
            high = mid - 1
        else:
            low, best, size = mid, hit, mid
    start = best + size
    period = len(ctx) - start
    return ctx[start + np.arange(left) % period].tolist()


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

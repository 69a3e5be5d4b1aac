"""Depth-first answer search against brute force on a known distribution, and on the real backends."""

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from submission.answers.sampling import GenRequest, Generation
from submission.answers.search import search

VOCAB, STOP, PROMPT = 5, 4, (9, 9)


def dist(prefix: tuple[int, ...], seed: int) -> np.ndarray:
    """A fixed next-token distribution for every prefix (peaked, like a trained model)."""
    rng = np.random.default_rng([seed, *prefix, len(prefix)])
    logits = rng.normal(0, 2.0, VOCAB)
    return np.exp(logits) / np.exp(logits).sum()


def greedy(probs, r, kind: str) -> Generation:
    """Greedy decoding of request `r` under `probs(ids)` (the next token's distribution), with
    the top-k log-probabilities of every position when `r` asks for them."""
    ids, top, lp = [], [], 0.0
    while len(ids) < r.max_tokens:
        p = probs(ids)
        order = np.argsort(-p, kind=kind)[: max(1, r.top_logprobs)]
        tok = int(order[0])
        top.append({int(t): math.log(p[t]) for t in order})
        lp += math.log(p[tok])
        ids.append(tok)
        if tok == STOP:
            break
    return Generation(ids, lp, top if r.top_logprobs else None)


class MarkovSampler:
    """Greedy decoding with top-k logprobs over `dist`: the Sampler interface, no model."""

    name = "markov"

    def __init__(self, seed: int):
        self.seed, self.calls = seed, 0

    def generate(self, requests):
        self.calls += 1
        out = []
        for r in requests:
            prefix = tuple(r.prompt[len(PROMPT):])
            out.append([greedy(lambda ids: dist(prefix + tuple(ids), self.seed), r, "quicksort")])
        return out


def brute_force(seed: int, threshold: float, max_len: int) -> dict[tuple[int, ...], float]:
    found = {}
    for n in range(1, max_len + 1):
        for body in itertools.product(range(VOCAB - 1), repeat=n - 1):
            seq, lp = tuple(body) + (STOP,), 0.0
            for i, t in enumerate(seq):
                lp += math.log(dist(seq[:i], seed)[t])
            if lp >= math.log(threshold):
                found[seq] = lp
    return found


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("threshold", [0.05, 0.17, 0.3])
def test_search_finds_exactly_the_answers_above_threshold(seed, threshold):
    max_len = 5
    sampler = MarkovSampler(seed)
    got = search(sampler, [GenRequest(PROMPT, None, max_len)], threshold=threshold, max_paths=10**6,
                 stop_ids=[STOP])[0]
    greedy = MarkovSampler(seed).generate([GenRequest(PROMPT, None, max_len)])[0][0]
    assert got[0].ids == greedy.ids and got[0].logprob == pytest.approx(greedy.logprob)
    above = {tuple(g.ids): g.logprob for g in got if g.logprob >= math.log(threshold) and g.ids[-1] == STOP}
    want = brute_force(seed, threshold, max_len)
    assert above.keys() == want.keys()
    for seq, lp in want.items():
        assert above[seq] == pytest.approx(lp)
    assert len({tuple(g.ids) for g in got}) == len(got)  # no answer twice


def test_max_paths_caps_the_search_and_zero_threshold_is_greedy():
    sampler = MarkovSampler(3)
    capped = search(sampler, [GenRequest(PROMPT, None, 5)], threshold=0.01, max_paths=2, stop_ids=[STOP])[0]
    assert 1 <= len(capped) <= 2
    plain = search(sampler, [GenRequest(PROMPT, None, 5)], threshold=0.0, max_paths=8, stop_ids=[STOP])[0]
    assert len(plain) == 1 and plain[0].ids == capped[0].ids


def test_sampled_requests_pass_through():
    sampler = MarkovSampler(1)
    reqs = [GenRequest(PROMPT, None, 5), GenRequest(PROMPT, None, 5, n=2, temperature=1.0)]
    out = search(sampler, reqs, threshold=0.1, max_paths=4, stop_ids=[STOP])
    assert len(out) == 2 and out[1]  # the sampled request is answered by plain generation


@pytest.mark.slow
def test_vllm_and_transformers_search_agree(engine):
    """The same search over vLLM (top-k logprobs, LoRA) and over a peft forward model."""
    from tests.helpers import zeros_task

    task = zeros_task("dfs", 2, 5)
    prompt = tuple(engine.fmt.encode_prompt(list(task.train), task.test_inputs[0]))
    reqs = [GenRequest(prompt, None, 8)]
    kw = dict(threshold=0.05, max_paths=6, stop_ids=engine.fmt.stop_token_ids)
    v = search(engine.sampler, reqs, **kw)[0]
    f = search(engine.forward, reqs, **kw)[0]
    assert [g.ids for g in v] == [g.ids for g in f]
    for a, b in zip(v, f):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)


# --- speculative DFS: the same answers as `_dfs`, with drafts from other views ------------------
from submission.answers.dfs import SearchStats, dfs  # noqa: E402
from submission.answers import speculative  # noqa: E402
from submission.answers.speculative import Frame, speculative_dfs  # noqa: E402

PERMS = [(0, 1, 2, 3), (2, 0, 3, 1), (3, 2, 1, 0), (1, 3, 0, 2), (2, 3, 0, 1), (1, 0, 3, 2)]


def _to_view(j: int, ids) -> list[int]:
    return [t if t == STOP else PERMS[j][t] for t in ids]


def _from_view(j: int, ids) -> list[int]:
    inv = {v: k for k, v in enumerate(PERMS[j])}
    return [t if t == STOP else inv[t] for t in ids]


class ViewSampler(MarkovSampler):
    """Views of one test input: view j (prompt PROMPT + (j,)) sees `dist` through a permutation of
    the non-stop tokens (its frame). `agree`: every view has the same distribution in the original
    frame (a trained model), else each view its own. `ties`: the two most likely tokens tie exactly
    at every other prefix. `verify` returns the rows a prefill would, or None (`unproven`)."""

    def __init__(self, seed: int, agree: bool = True, ties: bool = False, unproven: bool = False):
        super().__init__(seed)
        self.agree, self.ties, self.unproven = agree, ties, unproven

    def probs(self, view: int, prefix) -> np.ndarray:
        canon = tuple(_from_view(view, prefix))
        p = dist(canon, self.seed if self.agree else self.seed * 100 + view)
        if self.ties and len(canon) % 2 == 0:
            a, b = np.argsort(-p, kind="stable")[:2]
            p = p.copy()
            p[b] = p[a]
            p /= p.sum()
        out = np.empty_like(p)
        for t in range(VOCAB):
            out[_to_view(view, [t])[0]] = p[t]
        return out

    def generate(self, requests):
        self.calls += 1
        out = []
        for r in requests:
            view, prefix = r.prompt[len(PROMPT)], list(r.prompt[len(PROMPT) + 1:])
            out.append([greedy(lambda ids: self.probs(view, prefix + ids), r, "stable")])
        return out

    def verify(self, requests):
        out = []
        for r in requests:
            view, prefix = r.prompt[len(PROMPT)], list(r.prompt[len(PROMPT) + 1:])
            rows = []
            for pos, t in enumerate(r.answer):
                p = self.probs(view, prefix + list(r.answer[:pos]))
                order = np.argsort(-p, kind="stable")[: r.top_logprobs]
                rows.append({int(u): math.log(p[u]) for u in order} | {int(t): math.log(p[t])})
            out.append(None if self.unproven else rows)
        return out


def _frames(n_views: int, waves=None) -> list[Frame]:
    def to_key(j):
        return lambda ids: tuple(_from_view(j, ids)) if ids and ids[-1] == STOP else None

    def to_ids(j):
        return lambda key: _to_view(j, key)

    waves = waves or [min(j, 3) for j in range(n_views)]
    return [Frame("input", waves[j], to_key(j), to_ids(j)) for j in range(n_views)]


def _requests(n_views: int, max_len: int = 6) -> list[GenRequest]:
    return [GenRequest(PROMPT + (j,), None, max_len) for j in range(n_views)]


def _same(a, b):
    assert [[g.ids for g in x] for x in a] == [[g.ids for g in x] for x in b]
    for x, y in zip(a, b):
        for g, h in zip(x, y):
            assert g.logprob == pytest.approx(h.logprob, abs=1e-9)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("agree", [True, False])
@pytest.mark.parametrize("threshold,max_paths", [(0.05, 10**6), (0.17, 8), (0.1, 2), (0.3, 1)])
def test_speculative_dfs_equals_dfs(seed, agree, threshold, max_paths):
    n = 6
    plain, spec = SearchStats(), SearchStats()
    want = dfs(ViewSampler(seed, agree), _requests(n), threshold, max_paths, [STOP], plain)
    got = speculative_dfs(ViewSampler(seed, agree), _requests(n), _frames(n), threshold, max_paths,
                          [STOP], spec)
    _same(got, want)
    if agree:
        assert spec.decoded_tokens <= plain.decoded_tokens
        if want[0][0].ids[-1] == STOP:  # the first view's greedy answer is the others' draft
            assert spec.drafts_accepted >= n - 1
    assert spec.decoded_tokens <= plain.decoded_tokens + spec.drafts * 6  # never much worse


@pytest.mark.parametrize("chunk", [1, 2, 3])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("agree", [True, False])
def test_speculative_dfs_equals_dfs_when_decoding_goes_in_small_chunks(monkeypatch, chunk, seed, agree):
    """Decoding split into chunks of 1-3 tokens, a draft verified after each (branches and drafts
    opening inside chunked paths): still the answers of `dfs`, in its order."""
    monkeypatch.setattr(speculative, "CHUNK", chunk)
    n = 4
    for threshold, max_paths in ((0.05, 10**6), (0.17, 8)):
        want = dfs(ViewSampler(seed, agree), _requests(n, 9), threshold, max_paths, [STOP])
        got = speculative_dfs(ViewSampler(seed, agree), _requests(n, 9), _frames(n), threshold,
                              max_paths, [STOP])
        _same(got, want)


def test_speculative_dfs_decodes_far_less_when_views_agree():
    plain, spec = SearchStats(), SearchStats()
    for seed in range(10):
        dfs(ViewSampler(seed), _requests(6, 10), 0.17, 8, [STOP], plain)
        speculative_dfs(ViewSampler(seed), _requests(6, 10), _frames(6), 0.17, 8, [STOP], spec)
    assert spec.decoded_tokens * 2 < plain.decoded_tokens
    assert spec.drafts_accepted > 0 and spec.unverified == 0


@pytest.mark.parametrize("seed", range(8))
def test_speculative_dfs_matches_brute_force(seed):
    threshold, n = 0.05, 4
    got = speculative_dfs(ViewSampler(seed), _requests(n, 5), _frames(n), threshold, 10**6, [STOP])
    want = brute_force(seed, threshold, 5)
    for j, gens in enumerate(got):
        above = {tuple(_from_view(j, g.ids)): g.logprob for g in gens
                 if g.logprob >= math.log(threshold) and g.ids[-1] == STOP}
        assert above.keys() == want.keys()
        for seq, lp in want.items():
            assert above[seq] == pytest.approx(lp)


@pytest.mark.parametrize("seed", range(6))
def test_speculative_dfs_exact_ties_and_unproven_rows(seed):
    """Drafts through exactly tied argmaxes, and rows the sampler cannot vouch for: decoding
    takes over and the answers stay those of `_dfs`."""
    n = 5
    for kw in (dict(ties=True), dict(unproven=True), dict(ties=True, agree=False)):
        want = dfs(ViewSampler(seed, **kw), _requests(n), 0.1, 8, [STOP])
        stats = SearchStats()
        got = speculative_dfs(ViewSampler(seed, **kw), _requests(n), _frames(n), 0.1, 8, [STOP], stats)
        _same(got, want)
        if kw.get("unproven"):
            assert stats.unverified == stats.drafts > 0 and stats.accepted_tokens == 0


class TargetSampler(ViewSampler):
    """One answer per view (`targets[view]`, then STOP) at p = 0.8 per token on its way; off it,
    STOP is as likely."""

    def __init__(self, targets):
        super().__init__(0)
        self.targets = targets

    def probs(self, view: int, prefix) -> np.ndarray:
        target = self.targets[view]
        n = len(prefix)
        nxt = target[n] if n < len(target) and list(prefix) == target[:n] else STOP
        p = np.full(VOCAB, 0.05)
        p[nxt] = 0.8
        return p


def _seeded(seeds) -> list[Frame]:
    return [Frame("input", 0, lambda ids: tuple(ids) if ids and ids[-1] == STOP else None,
                  lambda key: list(key), (tuple(seed),)) for seed in seeds]


def test_redrafting_verifies_an_answer_that_differs_from_its_seed_in_a_few_tokens():
    """A seed (the test input) off in two tokens: two corrected tokens, no decoding, the same
    answer as `_dfs` in three sequential steps (verify calls) where `_dfs` takes 21."""
    target = [0, 1, 2, 3, 3, 2, 1, 0, 0, 2, 2, 1, 3, 1, 1, 0, 3, 0, 2, 0] + [STOP]
    seed = list(target)
    seed[7], seed[13] = 3, 2
    reqs = [GenRequest(PROMPT + (0,), None, 24)]
    plain, spec = SearchStats(), SearchStats()
    want = dfs(TargetSampler({0: target}), reqs, 0.5, 8, [STOP], plain)
    got = speculative_dfs(TargetSampler({0: target}), reqs, _seeded([seed]), 0.5, 8, [STOP], spec)
    _same(got, want)
    assert got[0][0].ids == target and plain.decode_steps == len(target)
    assert spec.decoded_tokens == 0 and spec.drafts_accepted == 1 and spec.redrafts >= 2
    assert spec.decode_steps + spec.verify_calls == 3


def test_redrafting_copies_a_repeating_answer_on_from_its_own_start():
    """A seed right for five tokens, then wrong: after the departure the path's 2-gram is found at
    its own start and copied on with its period (prompt lookup), so the rest is verified, not
    decoded; a seed that is wrong from its first token and has nothing to look up is decoded."""
    target = [0, 1, 2, 3] * 5 + [STOP]
    seed = [0, 1, 2, 3, 0] + [3] * 15 + [STOP]
    reqs = [GenRequest(PROMPT + (0,), None, 24)]
    spec = SearchStats()
    got = speculative_dfs(TargetSampler({0: target}), reqs, _seeded([seed]), 0.5, 8, [STOP], spec)
    assert got == dfs(TargetSampler({0: target}), reqs, 0.5, 8, [STOP]) and got[0][0].ids == target
    assert spec.decoded_tokens == 0 and spec.decode_steps + spec.verify_calls == 2
    other, miss = [3, 3, 3, STOP], SearchStats()
    got = speculative_dfs(TargetSampler({0: target}), reqs, _seeded([other]), 0.5, 8, [STOP], miss)
    assert got[0][0].ids == target and 0 < miss.decoded_tokens < len(target)


def test_decoding_stops_after_a_chunk_where_the_answer_repeats_itself(monkeypatch):
    """No seed and no other view: the first CHUNK tokens are decoded, then the path's latest
    4-gram is found at its own start and copied on with its period, verified to the stop token in
    one call (the substituted STOP ends it): CHUNK decode steps where `dfs` takes 33."""
    monkeypatch.setattr(speculative, "CHUNK", 8)  # two periods of the answer
    target = [0, 1, 2, 3] * 8 + [STOP]
    reqs = [GenRequest(PROMPT + (0,), None, 40)]
    plain, spec = SearchStats(), SearchStats()
    want = dfs(TargetSampler({0: target}), reqs, 0.5, 8, [STOP], plain)
    got = speculative_dfs(TargetSampler({0: target}), reqs, _frames(1), 0.5, 8, [STOP], spec)
    _same(got, want)
    assert got[0][0].ids == target and plain.decode_steps == len(target)
    assert spec.decode_steps == speculative.CHUNK and spec.decoded_tokens == speculative.CHUNK
    assert spec.decode_steps + spec.verify_calls <= speculative.CHUNK + 2


def test_a_path_whose_drafts_fail_decodes_in_doubling_chunks(monkeypatch):
    """Every draft wrong from its first token (each chunk then gains only its one corrected
    token): chunks of 8, 16, 32 and the rest, so the calls grow with the log of the answer's
    length, not with the length; the answer is still `dfs`'s."""
    rng = np.random.default_rng(0)
    target = [int(t) for t in rng.integers(0, STOP, 120)] + [STOP]

    def wrong(prompt, prefix, max_tokens, tried):
        return prefix + [(target[len(prefix)] + 1) % STOP] * 5

    monkeypatch.setattr(speculative, "CHUNK", 8)
    monkeypatch.setattr(speculative, "_lookup", wrong)
    monkeypatch.setattr(speculative, "_ngram", lambda prompt, path, left: [])
    reqs = [GenRequest(PROMPT + (0,), None, 130)]
    spec = SearchStats()
    got = speculative_dfs(TargetSampler({0: target}), reqs, _frames(1), 0.5, 8, [STOP], spec)
    _same(got, dfs(TargetSampler({0: target}), reqs, 0.5, 8, [STOP]))
    assert spec.decoded_tokens + spec.accepted_tokens == len(target)
    # drafts at the start and after chunks of 8, 16 and 32: each verified, then its one redraft round
    assert spec.generate_calls == 4 and spec.verify_calls == 2 * 4


def test_lookup_copies_the_row_above_not_a_run_inside_the_row():
    """Rows of one colour and a row break (3): the longest tail that occurred before (five 0s,
    the first row) is copied on with the row's period, where the latest 4-gram (0 0 0 0, one
    token back) would copy a run of 0s through the row break."""
    path = [0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0]
    assert speculative._ngram(np.array([9, 9]), path, 7) == [3, 0, 0, 0, 0, 0, 3]
    assert speculative._ngram(np.array([9, 9]), [1, 2], 3) == []  # no tail occurred before
    assert speculative._ngram(np.array([1, 2, 5, 9]), [1, 2], 3) == [5, 9, 1]  # the prompt's rest


def test_search_uses_frames_only_with_a_verifying_sampler():
    n = 4
    stats = SearchStats()
    out = search(ViewSampler(2), _requests(n), threshold=0.17, max_paths=8, stop_ids=[STOP],
                 frames=_frames(n), stats=stats)
    assert stats.verify_calls > 0
    plain = search(MarkovSampler(2), [GenRequest(PROMPT, None, 6)], threshold=0.17, max_paths=8,
                   stop_ids=[STOP], frames=[_frames(1)[0]])  # no `verify`: plain DFS
    assert plain[0][0].ids == MarkovSampler(2).generate([GenRequest(PROMPT, None, 6)])[0][0].ids
    assert out[0][0].ids == ViewSampler(2).generate(_requests(1))[0][0].ids


# --- speculative DFS on the tiny model: vLLM and the transformers sampler, several adapters -----
# the trained-adapter fixture `adapters` is in conftest.py


def _views_requests(engine, adapters, n_views=4, max_tokens=12, with_base=True):
    from submission.worker.sampling_stage import view_frames
    from submission.answers.sampling import build_views

    views, reqs = [], []
    for task, adapter in adapters:
        vs, _ = build_views(task, 0, engine.fmt, np.random.default_rng(7), n_views=n_views,
                            max_len=4096, answer_tokens=max_tokens)
        views += vs
        reqs += [GenRequest(v.prompt, adapter, max_tokens) for v in vs]
    if with_base:  # base-model views go in their own calls (vLLM LoRA bug): cover that path too
        task, _ = adapters[0]
        vs, _ = build_views(task, 0, engine.fmt, np.random.default_rng(8), n_views=2, max_len=4096,
                            answer_tokens=max_tokens)
        vs = [replace(v, task_id="base") for v in vs]
        views += vs
        reqs += [GenRequest(v.prompt, None, max_tokens) for v in vs]
    return views, reqs, view_frames(views, engine.fmt)


def _next_logprobs(engine, prompt, adapter):
    import torch

    fwd = engine.forward
    fwd.trainer.set_mode(training=False)
    with fwd._use(adapter), torch.no_grad():
        logits = fwd.model(input_ids=torch.tensor([list(prompt)]), use_cache=False).logits[0, -1]
    return logits.double().log_softmax(-1).tolist()


def _enumerate(engine, prompt, adapter, threshold, max_tokens, stops):
    """Every answer with p >= threshold, by exhaustive enumeration of the prefix tree (a prefix
    below the threshold has no continuation above it), one forward pass per node."""
    out, stack = {}, [((), 0.0)]
    while stack:
        prefix, lp = stack.pop()
        for t, step in enumerate(_next_logprobs(engine, prompt + prefix, adapter)):
            if lp + step < math.log(threshold):
                continue
            if t in stops:
                out[prefix + (t,)] = lp + step
            elif len(prefix) + 1 < max_tokens:
                stack.append((prefix + (t,), lp + step))
    return out


def _agreeing_later_views(found, frames) -> int:
    """Views after the first of the test inputs whose views all have one greedy answer."""
    keys: dict = {}
    for gens, f in zip(found, frames):
        keys.setdefault(f.group, []).append(f.to_key(gens[0].ids))
    return sum(len(k) - 1 for k in keys.values() if k[0] is not None and len(set(k)) == 1)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sampler", "forward"])
def test_speculative_dfs_on_the_tiny_model(engine, adapters, backend):
    """Three trained adapters (views agree) and base-model views in one search: the answers of
    `_dfs` and of exhaustive enumeration, with most views verified instead of decoded."""
    sampler = getattr(engine, backend)
    _, reqs, frames = _views_requests(engine, adapters)
    stops = engine.fmt.stop_token_ids
    for threshold, max_paths in ((0.1, 100), (0.17, 2)):
        plain, spec = SearchStats(), SearchStats()
        want = dfs(sampler, reqs, threshold, max_paths, stops, plain)
        got = speculative_dfs(sampler, reqs, frames, threshold, max_paths, stops, spec)
        assert [[g.ids for g in x] for x in got] == [[g.ids for g in x] for x in want]
        for x, y in zip(got, want):
            for g, h in zip(x, y):
                assert g.logprob == pytest.approx(h.logprob, abs=1e-3)
        # where every view of a test input decodes the same greedy answer (an adapter that learnt
        # its task), each view after the first takes it from the first without decoding
        agreeing = _agreeing_later_views(want, frames)
        assert agreeing >= 3, "the trained adapters' views should agree on some test input"
        assert spec.unverified == 0 and spec.drafts_accepted >= agreeing
        assert spec.decoded_tokens < plain.decoded_tokens
    if backend == "forward":
        return
    got = speculative_dfs(sampler, reqs, frames, 0.17, 100, stops)
    for r, gens in list(zip(reqs, got))[::3]:  # brute force on a few views (forward-pass cost)
        want = _enumerate(engine, r.prompt, r.adapter, 0.17, r.max_tokens, set(stops))
        mine = {tuple(g.ids): g.logprob for g in gens if g.logprob >= math.log(0.17) and g.ids[-1] in stops}
        assert mine.keys() == want.keys()


def test_verify_calls_fit_the_kv_cache():
    """vLLM verification batches hold at most the KV blocks that exist (less the null block), so
    no request of a call can be preempted; an oversized request goes alone."""
    from submission.model.backends.vllm_prefill import _fit
    from submission.answers.sampling import VerifyRequest

    reqs = [VerifyRequest((1,) * p, (2,) * a, None, 5) for p, a in
            ((30, 9), (14, 1), (15, 0), (100, 20), (3, 3))]
    batches = _fit(list(range(5)), reqs, blocks=6, size=16)
    assert [i for b in batches for i in b] == list(range(5))
    for b in batches:
        need = sum(-(-(len(reqs[i].prompt) + len(reqs[i].answer) + 1) // 16) for i in b)
        assert need <= 5 or len(b) == 1
    assert [3] in batches


def _two_drafts(engine, adapters):
    """An adapter, a prompt and two 20 x 20 answers that differ only in their last cell."""
    from submission.arc.grids import as_grid

    task, adapter = adapters[1]
    prompt = tuple(engine.fmt.encode_prompt(list(task.train), task.test_inputs[0]))
    grid = np.zeros((20, 20), dtype=np.uint8)
    first = engine.fmt.encode_answer(as_grid(grid))
    grid[19, 19] = 3
    return adapter, prompt, first, engine.fmt.encode_answer(as_grid(grid))


@pytest.mark.slow
def test_vllm_verify_rows_are_computed(engine, adapters):
    """A draft whose prefix-cache hit reaches into its answer (an earlier draft shared its first
    answer blocks) is verified again without reading the cache: rows equal the forward pass."""
    from submission.answers.sampling import VerifyRequest

    adapter, prompt, first, second = _two_drafts(engine, adapters)
    before = engine.sampler.verify_retries
    for answer in (first, second):
        req = [VerifyRequest(prompt, tuple(answer), adapter, 6)]
        got, want = engine.sampler.verify(req)[0], engine.forward.verify(req)[0]
        assert len(got) == len(answer)
        for g, w in zip(got, want):
            assert g.keys() == w.keys() and max(abs(g[t] - w[t]) for t in g) < 1e-3
    assert engine.sampler.verify_retries == before + 1


@pytest.mark.slow
def test_vllm_verify_reads_the_rows_the_caller_holds_from_the_cache(engine, adapters):
    """A redraft (`VerifyRequest.known`: the caller holds the rows of the first `known` answer
    positions) may read its cache hit into those rows: no second call, the held rows come back
    empty and every other row equals the forward pass."""
    from submission.answers.sampling import VerifyRequest

    adapter, prompt, first, second = _two_drafts(engine, adapters)
    d = next(j for j, (a, b) in enumerate(zip(first, second)) if a != b)
    engine.sampler.verify([VerifyRequest(prompt, tuple(first), adapter, 6)])
    before = engine.sampler.verify_retries
    req = [VerifyRequest(prompt, tuple(second), adapter, 6, known=d + 1)]
    got, want = engine.sampler.verify(req)[0], engine.forward.verify(req)[0]
    assert engine.sampler.verify_retries == before
    assert got[:d + 1] == [{}] * (d + 1) and len(got) == len(second)
    for g, w in zip(got[d + 1:], want[d + 1:]):
        assert g.keys() == w.keys() and max(abs(g[t] - w[t]) for t in g) < 1e-3


# --- when speculative search stops: its drafts do not pay ------------------------------------------
def test_speculative_pays_while_probing_then_only_above_the_accepted_share():
    from submission.answers.search import MIN_ACCEPTED, PROBE_PATHS, speculative_pays

    assert speculative_pays(SearchStats())
    assert speculative_pays(SearchStats(paths=PROBE_PATHS - 1))  # still probing: nothing accepted yet
    assert not speculative_pays(SearchStats(paths=PROBE_PATHS))
    need = math.ceil(MIN_ACCEPTED * 1000)
    assert speculative_pays(SearchStats(paths=1000, drafts_accepted=need))
    assert not speculative_pays(SearchStats(paths=1000, drafts_accepted=need - 1))


def test_an_engine_whose_drafts_do_not_pay_goes_on_with_plain_dfs_counted_once():
    from types import SimpleNamespace

    from submission import events as ev
    from submission.answers.search import PROBE_PATHS
    from submission.config import Config
    from submission.events import Counts
    from submission.worker.sampling_stage import _search

    class PlainOnly:
        name = "plain"

        def generate(self, requests):
            return [[Generation([STOP], -0.1, [{STOP: -0.1}])] for _ in requests]

        def verify(self, requests):
            raise AssertionError("no draft is verified once speculative search stopped")

    engine = SimpleNamespace(sampler=PlainOnly(), fmt=SimpleNamespace(stop_token_ids=[STOP]),
                             speculative=SearchStats(paths=PROBE_PATHS), speculative_off=False,
                             fallbacks=Counts())
    cfg = Config()
    assert cfg.sampling.speculative
    views = [(SimpleNamespace(task_id="t"), False)] * 3
    stats = SearchStats()
    for _ in range(2):
        got = _search(engine, cfg, views, _requests(3), stats, {"t": 0.17})
        assert [g[0].ids for g in got] == [[STOP]] * 3
    assert engine.fallbacks[ev.SPECULATIVE_OFF] == 1 and engine.speculative_off
    assert stats.paths == 6 and stats.drafts == 0  # the chunk's stats still count the searches
    assert engine.speculative.paths == PROBE_PATHS  # plain searches do not count as speculative

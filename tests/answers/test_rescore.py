"""Re-scoring: pairs grouped by prompt, the prefix-KV forward pass and vLLM's batched scoring equal
one pass per pair, fewer tokens go through the model, and the vLLM-vs-forward decision compares
candidate orders and is recorded."""

from __future__ import annotations

import types
from collections import Counter

import numpy as np
import pytest

from submission.answers import rescore as R
from submission.model.engine import Engine
from submission.errors import STRICT_ENV, SamplerError
from submission.arc.grids import Task, as_grid
from submission.answers.select import Candidate
from submission.events import RESCORE_VLLM_FAILED
from tests.helpers import SMALL, random_adapter, random_task


class DigitFormat:
    """Grids as digits, rows ended by 10, pairs by 11, the answer after 12 (no tokenizer needed)."""

    def _grid(self, g) -> list[int]:
        return [int(v) for row in np.asarray(g) for v in [*row, 10]]

    def encode_prompt(self, demos, query) -> list[int]:
        out: list[int] = []
        for p in demos:
            out += self._grid(p.input) + [12] + self._grid(p.output) + [11]
        return out + self._grid(query) + [12]

    def encode_answer(self, grid) -> list[int]:
        return self._grid(grid) + [11]


def det_score(prompt, answer) -> float:
    """A deterministic stand-in for log p: depends on every token of both."""
    return -float((sum((i + 1) * t for i, t in enumerate(prompt)) * 7
                   + sum((i + 3) * t for i, t in enumerate(answer))) % 997) / 10


class PairScorer:
    name = "pairs"

    def __init__(self, score=det_score, clock=None, cost=1.0) -> None:
        self.fn, self.clock, self.cost, self.calls = score, clock, cost, 0

    def score(self, prompt, answer, adapter):
        self.calls += 1
        if self.clock is not None:
            self.clock.t += self.cost
        return self.fn(prompt, answer)


class GroupScorer(PairScorer):
    name = "groups"

    def __init__(self, *a, fail: Exception | None = None, **k) -> None:
        super().__init__(*a, **k)
        self.groups, self.fail = [], fail

    def score_groups(self, groups, adapter):
        if self.fail is not None:
            raise self.fail
        self.groups.append(groups)
        return [[self.score(p, a, adapter) for a in answers] for p, answers in groups]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def perf_counter(self) -> float:
        return self.t


def cand(grid, count=1, first=0) -> Candidate:
    return Candidate(as_grid(grid), count, set(), set(), 0.0, first, False)


def small_task(seed: int = 0, n_train: int = 3, side: int = 3) -> Task:
    return random_task(f"t{seed}", seed, side=side, n_train=n_train)


def three_cands(seed: int = 1) -> list[Candidate]:
    rng = np.random.default_rng(seed)
    return [cand(rng.integers(0, 10, (3, 3)), count=3 - i, first=i) for i in range(3)]


# ---------------------------------------------------------------- pairs, groups, old loop


def old_rescore(task, cands, fmt, scorer, rng, *, n, max_len):
    """The loop re-scoring used before: one score call per (transform, candidate)."""
    from submission.arc.augment import sample_transforms

    k = len(task.train)
    out = [[] for _ in cands]
    for t in sample_transforms(rng, n, k, keep_background=True, shuffle_order=k > 1,
                               include_identity=True):
        order = t.order if t.order is not None else tuple(range(k))
        demos = [t.apply_pair(task.train[j]) for j in order]
        query = t.apply_grid(task.test_inputs[0])
        for i, c in enumerate(cands):
            answer = fmt.encode_answer(t.apply_grid(c.grid))
            out[i].append(scorer.score(R.fitted_prompt(fmt, demos, query, len(answer), max_len),
                                       answer, None))
    return out


@pytest.mark.parametrize("max_len", [4096, 60])  # 60: demos are dropped to fit, per answer length
def test_rescore_equals_the_old_loop_with_one_grouped_call(max_len):
    task, fmt = small_task(), DigitFormat()
    cands = three_cands() + [cand(np.zeros((1, 1)), first=3)]  # a shorter answer: its own prompt
    want = old_rescore(task, cands, fmt, PairScorer(), np.random.default_rng(5), n=4, max_len=max_len)
    scorer = GroupScorer()
    calls = R.rescore(task, 0, cands, fmt, scorer, None, np.random.default_rng(5), n=4, max_len=max_len)
    assert calls == 16 and [c.rescore_logprobs for c in cands] == want
    assert len(scorer.groups) == 1  # one call for the whole input
    groups = scorer.groups[0]
    assert len({tuple(p) for p, _ in groups}) == len(groups)  # grouped by prompt
    assert sum(len(a) for _, a in groups) == 16
    if max_len == 4096:
        assert len(groups) == 4  # one prompt per transform


def test_score_pairs_without_score_groups_calls_score_per_pair():
    pairs = [([1, 2], [3]), ([1, 2], [4, 5]), ([9], [3])]
    scorer = PairScorer()
    assert R.score_pairs(scorer, pairs, None) == [det_score(p, a) for p, a in pairs]
    assert scorer.calls == 3
    grouped = GroupScorer()
    assert R.score_pairs(grouped, pairs, None) == [det_score(p, a) for p, a in pairs]
    assert [len(a) for _, a in grouped.groups[0]] == [2, 1]


def test_rescore_of_no_candidates_calls_nothing():
    scorer = GroupScorer()
    assert R.rescore(small_task(), 0, [], DigitFormat(), scorer, None, np.random.default_rng(0),
                     n=4, max_len=100) == 0
    assert scorer.groups == []


def test_spearman():
    assert R.spearman("abcd", "abcd") == 1.0
    assert R.spearman("abcd", "dcba") == -1.0
    assert 0 < R.spearman("abcd", "bacd") < 1


# ---------------------------------------------------------------- the rank check


def run_check(monkeypatch, vllm_fn, *, vllm_cost, forward_cost=1.0, fail=None, inputs=2,
              cands=three_cands):
    clock = Clock()
    monkeypatch.setattr(R, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    fwd = GroupScorer(clock=clock, cost=forward_cost)
    vl = GroupScorer(vllm_fn, clock=clock, cost=vllm_cost, fail=fail)
    info, counts = {}, Counter()
    check = R.RankCheck(vl, fwd, policy="count-nll", poe_offset=3.0, info=info,
                        count=lambda k: counts.update([k]))
    got = []
    for i in range(inputs):
        cs = cands(i + 1)
        R.rescore(small_task(i), 0, cs, DigitFormat(), check, None, np.random.default_rng(i), n=3,
                  max_len=4096)
        got.append([c.rescore_logprobs for c in cs])
    return check, info, counts, got


def test_check_picks_vllm_when_orders_agree_and_it_is_faster(monkeypatch):
    shifted = lambda p, a: det_score(p, a) - 0.5  # noqa: E731 - off by a constant: same order
    check, info, counts, got = run_check(monkeypatch, shifted, vllm_cost=0.2)
    assert check.choice == "vllm" and info["rescore_backend"] == "vllm"
    rep = info["rescore_check"]
    assert rep["status"] == "decided" and rep["top2_same"] == "2/2" and rep["min_rank_corr"] == 1.0
    assert rep["max_logprob_gap"] == pytest.approx(0.5)
    assert len(rep["inputs"]) == 2 and all(r["candidates"] == 3 for r in rep["inputs"])
    assert rep["seconds"]["vllm"] < rep["seconds"]["forward"]
    assert not counts
    # selection got the forward pass's scores (not vLLM's) while checking
    pairs, owner = R.augmented_pairs(small_task(0), 0, three_cands(1), DigitFormat(),
                                     np.random.default_rng(0), n=3, max_len=4096)
    assert got[0][0] == [det_score(*pair) for pair, o in zip(pairs, owner) if o == 0]


def test_check_keeps_forward_when_orders_differ(monkeypatch):
    reverse = lambda p, a: -det_score(p, a) - 200  # noqa: E731 - the opposite order
    check, info, counts, _ = run_check(monkeypatch, reverse, vllm_cost=0.1)
    assert check.choice == "forward" and info["rescore_backend"] == "forward"
    assert "differ" in info["rescore_check"]["reason"]
    assert counts == {"rescore_vllm_disagrees_use_forward": 1}


def test_check_keeps_forward_when_vllm_is_not_faster(monkeypatch):
    check, info, counts, _ = run_check(monkeypatch, det_score, vllm_cost=2.0)
    assert check.choice == "forward" and "not faster" in info["rescore_check"]["reason"]
    assert info["rescore_check"]["max_logprob_gap"] == 0.0 and not counts


def test_check_keeps_forward_when_vllm_fails(monkeypatch):
    check, info, counts, got = run_check(monkeypatch, det_score, vllm_cost=0.1,
                                         fail=SamplerError("boom"), inputs=1)
    assert check.choice == "forward" and "boom" in info["rescore_check"]["reason"]
    assert counts == {"rescore_vllm_failed_use_forward": 1}
    assert all(len(lps) == 3 for lps in got[0])  # the input was still re-scored


def test_vllm_failure_not_ours_reraises_under_the_strict_switch(monkeypatch):
    """The suite runs strict (tests/conftest.py): an engine's RuntimeError fails the call instead
    of silently keeping the forward pass; without the switch it is the counted fallback. A
    programming error (TypeError) is never caught."""
    assert __import__("os").environ.get(STRICT_ENV) == "1"
    with pytest.raises(RuntimeError, match="engine died"):
        run_check(monkeypatch, det_score, vllm_cost=0.1, fail=RuntimeError("engine died"), inputs=1)
    monkeypatch.delenv(STRICT_ENV)
    check, info, counts, got = run_check(monkeypatch, det_score, vllm_cost=0.1,
                                         fail=RuntimeError("engine died"), inputs=1)
    assert check.choice == "forward" and counts == {RESCORE_VLLM_FAILED: 1}
    assert all(len(lps) == 3 for lps in got[0])
    with pytest.raises(TypeError):
        run_check(monkeypatch, det_score, vllm_cost=0.1, fail=TypeError("a bug"), inputs=1)


def bare_forward(fail: Exception):
    """The transformers scorer's prefix logic alone: every prefix mode raises `fail`, one pass per
    answer is `det_score`."""
    from submission.model.backends.hf_sampler import HFSampler

    hf, counts = HFSampler.__new__(HFSampler), Counter()
    hf.prefix_kv = {"mode": "tree", "checked": {}, "errors": {}}
    hf.count = lambda k: counts.update([k])
    hf.score = lambda p, a, adapter: det_score(p, a)

    def boom(*args, **kwargs):
        raise fail

    hf._prefix_scores = boom
    return hf, counts


def test_prefix_kv_fallback_strict_switch_both_ways(monkeypatch):
    groups = [([1, 2, 3], [[4, 5], [6]])]
    hf, counts = bare_forward(ValueError("this model takes no 4D mask"))
    with pytest.raises(ValueError, match="4D mask"):  # strict: not ours, re-raised
        hf.score_groups(groups, None)
    assert hf.prefix_kv["mode"] == "tree" and not counts
    monkeypatch.delenv(STRICT_ENV)
    assert hf.score_groups(groups, None) == [[det_score([1, 2, 3], a) for a in ([4, 5], [6])]]
    assert hf.prefix_kv["mode"] == "off" and counts == {"rescore_prefix_tree_off": 1,
                                                         "rescore_prefix_batch_off": 1}
    for bug in (TypeError("a bug"), AttributeError("a bug"), KeyError("a bug"), IndexError("a bug")):
        hf, counts = bare_forward(bug)
        with pytest.raises(type(bug)):  # never a fallback, strict or not
            hf.score_groups(groups, None)
        assert not counts
    from submission.model.backends.hf_sampler import PrefixCacheError

    monkeypatch.setenv(STRICT_ENV, "1")
    hf, counts = bare_forward(PrefixCacheError("no KV cache"))  # ours: falls back even strict
    hf.score_groups(groups, None)
    assert hf.prefix_kv["mode"] == "off" and "no KV cache" in hf.prefix_kv["errors"]["tree"]


def test_check_counts_only_inputs_with_two_candidates(monkeypatch):
    one = lambda seed: [cand(np.full((2, 2), seed))]  # noqa: E731
    check, info, _, _ = run_check(monkeypatch, det_score, vllm_cost=0.1, inputs=R.CHECK_MAX_INPUTS,
                                  cands=one)
    assert check.choice == "forward" and info["rescore_check"]["inputs"] == []
    assert info["rescore_check"]["inputs_scored"] == R.CHECK_MAX_INPUTS
    assert "two candidates" in info["rescore_check"]["reason"]


def test_check_uses_the_selection_order_not_the_raw_scores(monkeypatch):
    """Counts dominate count-nll: vLLM reversing two close candidates' log p changes nothing
    selection does when their counts differ."""
    def cands(seed):
        return [cand(np.full((2, 2), 1), count=5), cand(np.full((2, 2), 2), count=1, first=1)]
    swap = lambda p, a: -det_score(p, a) - 100  # noqa: E731
    check, info, _, _ = run_check(monkeypatch, swap, vllm_cost=0.1, cands=cands)
    assert all(r["top2_same"] and r["rank_corr"] is None for r in info["rescore_check"]["inputs"])


def fake_engine(sampler, forward, choice_cfg=SMALL) -> Engine:
    return Engine(cfg=choice_cfg, fmt=None, trainer=None, sampler=sampler, forward=forward)


def test_engine_scorer_choices_and_recorded_decision(monkeypatch):
    fwd, vl = GroupScorer(), GroupScorer()
    eng = fake_engine(vl, fwd)
    assert eng.scorer("forward") is fwd and eng.info["rescore_backend"] == "forward"
    assert eng.scorer("vllm") is vl and eng.info["rescore_backend"] == "vllm"
    check = eng.scorer("auto")
    assert isinstance(check, R.RankCheck) and eng.scorer("auto") is check
    check._decide("vllm", "test")
    assert eng.scorer("auto") is vl and eng.info["rescore_check"]["choice"] == "vllm"
    eng._rescore_checked = False  # asks for a new check
    assert isinstance(eng.scorer("auto"), R.RankCheck)
    assert eng.scorer("auto") is not check
    same = fake_engine(fwd, fwd)  # no vLLM: the forward pass, no check
    assert same.scorer("auto") is fwd


# ---------------------------------------------------------------- the real backends (slow)


@pytest.fixture(scope="module")
def adapter(engine, tmp_path_factory):
    return random_adapter(engine, tmp_path_factory.mktemp("rescore") / "adapter", seed=3, name="rescore")


def groups_of(engine, seed: int = 0):
    """Two prompts with answers of several lengths: one token, shared first rows, a long one."""
    fmt = engine.fmt
    task = small_task(seed, side=5)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 10, (5, 5))
    answers = [base, base.copy(), rng.integers(0, 10, (2, 3)), rng.integers(0, 10, (7, 6))]
    answers[1][3:] = (answers[1][3:] + 1) % 10  # shares its first three rows with answers[0]
    encoded = [fmt.encode_answer(as_grid(a)) for a in answers] + [[fmt.stop_token_ids[0]]]
    prompts = [fmt.encode_prompt(list(task.train), task.test_inputs[0]),
               fmt.encode_prompt(list(task.train)[::-1], task.test_inputs[0])]
    return [(p, encoded) for p in prompts]


def one_pass(engine, groups, adapter):
    return [[engine.forward.score(p, a, adapter) for a in answers] for p, answers in groups]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["tree", "batch"])
def test_prefix_kv_equals_one_pass_with_fewer_tokens(engine, adapter, mode, monkeypatch):
    fwd = engine.forward
    monkeypatch.setattr(fwd, "prefix_kv", {"mode": mode, "checked": {}, "errors": {}})
    if mode == "batch":
        monkeypatch.setattr(fwd, "chunk_limit", dict(fwd.chunk_limit, batch=600))  # several batches
    groups = groups_of(engine)
    full = sum(len(p) + len(a) for p, answers in groups for a in answers)
    for handle in (adapter, None):  # the first call also runs the mode's check
        want = one_pass(engine, groups, handle)
        before, forwards = fwd.score_tokens, fwd.score_forwards
        got = fwd.score_groups(groups, handle)
        for g, w in zip(got, want):
            assert g == pytest.approx(w, abs=1e-4)
        assert fwd.prefix_kv["mode"] == mode and mode in fwd.prefix_kv["checked"]
        assert fwd.score_forwards > forwards
    assert fwd.score_tokens - before < full / 2  # each prompt once, not once per answer


@pytest.mark.slow
def test_tree_shares_answer_prefixes(engine, adapter, monkeypatch):
    fwd = engine.forward
    monkeypatch.setattr(fwd, "prefix_kv", {"mode": "tree", "checked": {"tree": 0.0}, "errors": {}})
    (prompt, answers), _ = groups_of(engine)
    before = fwd.score_tokens
    fwd.score_groups([(prompt, answers)], adapter)
    distinct = len({tuple(a[:k]) for a in answers for k in range(1, len(a))})
    assert fwd.score_tokens - before == len(prompt) + distinct < len(prompt) + sum(
        len(a) - 1 for a in answers)


@pytest.mark.slow
def test_a_mode_that_fails_or_disagrees_hands_over_and_is_counted(engine, adapter, monkeypatch):
    fwd, counts = engine.forward, Counter()
    monkeypatch.setattr(fwd, "prefix_kv", {"mode": "tree", "checked": {}, "errors": {}})
    monkeypatch.setattr(fwd, "count", lambda k: counts.update([k]))

    monkeypatch.delenv(STRICT_ENV)  # a ValueError is not ours: a fallback only without the switch

    def no_mask(*a, **k):
        raise ValueError("this model takes no 4D mask")

    real_batch = type(fwd)._score_batch

    def half_off(self, chunk, answers, cache, prompt_len, scores):  # a cache used wrongly
        real_batch(self, chunk, answers, cache, prompt_len, scores)
        for i in chunk:
            scores[i] *= 1.5

    monkeypatch.setattr(fwd, "_score_tree", no_mask)
    monkeypatch.setattr(fwd, "_score_batch", types.MethodType(half_off, fwd))
    groups = groups_of(engine, seed=1)
    got = fwd.score_groups(groups, adapter)
    for g, w in zip(got, one_pass(engine, groups, adapter)):
        assert g == pytest.approx(w, abs=1e-4)
    assert fwd.prefix_kv["mode"] == "off"
    assert "4D mask" in fwd.prefix_kv["errors"]["tree"] and "differ" in fwd.prefix_kv["errors"]["batch"]
    assert counts == {"rescore_prefix_tree_off": 1, "rescore_prefix_batch_off": 1}


@pytest.mark.slow
def test_vllm_batched_scores_equal_forward_and_read_the_prefix_cache(engine, adapter):
    v = engine.sampler
    groups = groups_of(engine, seed=2)
    # an answer sharing 300 tokens with another: vLLM's cache hit reaches past the prompt
    long_a = engine.fmt.encode_answer(as_grid(np.arange(400).reshape(20, 20) % 10))
    long_b = long_a[:300] + [(t + 1) % 10 for t in long_a[300:-1]] + long_a[-1:]
    groups[0] = (groups[0][0], groups[0][1] + [long_a, long_b])
    want = one_pass(engine, groups, adapter)
    before, retries = v.score_tokens, v.score_retries
    got = v.score_groups(groups, adapter)
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-3)
    full = sum(len(p) + len(a) for p, answers in groups for a in answers)
    assert v.score_tokens - before < full  # prompts read from the prefix cache
    assert v.score_retries > retries  # long_b scored again, whole


@pytest.mark.slow
def test_auto_check_on_the_engine_records_its_decision(engine, adapter):
    engine._rescore_checked = False
    task = small_task(7)
    for i in range(R.CHECK_INPUTS):
        scorer = engine.scorer("auto")
        assert isinstance(scorer, R.RankCheck)
        cands = three_cands(10 + i)
        R.rescore(task, 0, cands, engine.fmt, scorer, adapter, np.random.default_rng(i), n=2,
                  max_len=4096)
        assert all(len(c.rescore_logprobs) == 2 for c in cands)
    rep = engine.info["rescore_check"]
    assert rep["status"] == "decided" and rep["choice"] == engine.info["rescore_backend"]
    assert rep["top2_same"] == f"{R.CHECK_INPUTS}/{R.CHECK_INPUTS}"  # same model: same order
    assert rep["max_logprob_gap"] < 1e-3
    faster = rep["seconds"]["vllm"] < rep["seconds"]["forward"]
    assert rep["choice"] == ("vllm" if faster else "forward")
    assert engine.info["rescore_prefix_kv"] is engine.forward.prefix_kv
    chosen = engine.scorer("auto")
    assert chosen is (engine.sampler if rep["choice"] == "vllm" else engine.forward)
    engine._rescore_checked = False

"""Depth-first answer search against brute force on a known distribution, and on the real backends."""

import itertools
import math

import numpy as np
import pytest

from submission.sample import GenRequest, Generation
from submission.search import search

VOCAB, STOP, PROMPT = 5, 4, (9, 9)


def dist(prefix: tuple[int, ...], seed: int) -> np.ndarray:
    """A fixed next-token distribution for every prefix (peaked, like a trained model)."""
    rng = np.random.default_rng([seed, *prefix, len(prefix)])
    logits = rng.normal(0, 2.0, VOCAB)
    return np.exp(logits) / np.exp(logits).sum()


class MarkovSampler:
    """Greedy decoding with top-k logprobs over `dist`: the Sampler interface, no model."""

    name = "markov"

    def __init__(self, seed: int):
        self.seed, self.calls = seed, 0

    def generate(self, requests):
        self.calls += 1
        out = []
        for r in requests:
            prefix, ids, top, lp = tuple(r.prompt[len(PROMPT):]), [], [], 0.0
            while len(ids) < r.max_tokens:
                p = dist(prefix + tuple(ids), self.seed)
                order = np.argsort(-p)[: max(1, r.top_logprobs)]
                tok = int(order[0])
                top.append({int(t): math.log(p[t]) for t in order})
                lp += math.log(p[tok])
                ids.append(tok)
                if tok == STOP:
                    break
            out.append([Generation(ids, lp, top if r.top_logprobs else None)])
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
    from tests.test_engine import zeros_task

    task = zeros_task("dfs", 2, 5)
    prompt = tuple(engine.fmt.encode_prompt(list(task.train), task.test_inputs[0]))
    reqs = [GenRequest(prompt, None, 8)]
    kw = dict(threshold=0.05, max_paths=6, stop_ids=engine.fmt.stop_token_ids)
    v = search(engine.sampler, reqs, **kw)[0]
    f = search(engine.forward, reqs, **kw)[0]
    assert [g.ids for g in v] == [g.ids for g in f]
    for a, b in zip(v, f):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)

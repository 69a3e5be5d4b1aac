"""Scoring and draft verification by prefill on the vLLM engine: each answer's total log p after
its prompt (re-scoring) and the top-k logprobs at every draft position (speculative answer search),
both from `prompt_logprobs`, reading prompts' blocks from the prefix cache only where no row read
can be garbage. `VLLMPrefill` is the base of `VLLMSampler` (vllm_sampler.py), which runs the calls
(`_run`), makes the LoRA requests and holds the engine and the counters; this module neither starts
an engine nor generates.

Prefix-cache reads and preemption. vLLM returns `prompt_logprobs` rows for the positions it
served from the cache uninitialised, not absent (`LogprobsTensors.empty_cpu`, vllm/v1/outputs.py:174,
filled from `num_computed_tokens` on, vllm/v1/worker/gpu_model_runner.py:5342-5348), and
`num_cached_tokens` reports the first scheduling's hit only (vllm/v1/core/sched/scheduler.py:1074).
A request preempted mid-prefill (its blocks freed, vllm/v1/core/sched/scheduler.py:1593) reads the
cache again when it resumes, possibly past what it computed itself: those rows would be garbage
with nothing to show for it. So a call that reads the cache holds only requests whose KV fits the
idle engine's cache all at once (counted per request, shared blocks ignored): no allocation can
then fail, so nothing is preempted. Without reads (`skip_reading_prefix_cache`, which vLLM applies
on resume too, vllm/v1/core/kv_cache_manager.py:251) a resumed request recomputes every row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from submission.errors import SamplerError
from submission.answers.sampling import Adapter, VerifyRequest


class VLLMPrefill:
    """Prefill calls of `VLLMSampler`; what they use of it is declared here."""

    llm: Any
    kv_blocks: tuple[int, int] | None
    max_top: int
    calls: int
    compute_s: float
    score_tokens: int
    score_retries: int
    verify_tokens: int
    verify_retries: int
    _run: Callable[..., list]
    _lora: Callable[[Adapter | None], Any]

    def score(self, prompt: list[int], answer: list[int], adapter: Adapter | None) -> float:
        """One request, prefilled whole (no prefix-cache read)."""
        return self._score_requests([(list(prompt), list(answer))], adapter, read_cache=False)[0]

    def score_groups(self, groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
                     adapter: Adapter | None) -> list[list[float]]:
        """Per group (prompt, answers): each answer's total log p after the prompt, in three
        rounds (each split where its KV would not fit at once, module docstring). First one answer
        per prompt (which computes and caches the prompt's blocks), then all other answers,
        reading those blocks from the prefix cache. vLLM computes no `prompt_logprobs` for
        positions served from the cache, so an answer whose hit reached past its prompt's last
        token (it shares its first tokens with an answer already cached) is scored again, whole,
        in a third round."""
        jobs = [(g, j) for g, (_, answers) in enumerate(groups) for j in range(len(answers))]
        pairs = {(g, j): (list(groups[g][0]), list(groups[g][1][j])) for g, j in jobs}
        out: dict[tuple[int, int], float | None] = {}
        first = [(g, 0) for g, (_, answers) in enumerate(groups) if answers]
        rest = [job for job in jobs if job[1] > 0]
        for batch in (first, rest):
            if batch:
                out.update(zip(batch, self._score_requests([pairs[k] for k in batch], adapter,
                                                           read_cache=True)))
        again = [k for k in jobs if out[k] is None]
        if again:
            self.score_retries += len(again)
            out.update(zip(again, self._score_requests([pairs[k] for k in again], adapter,
                                                       read_cache=False)))
        return [[out[(g, j)] for j in range(len(answers))] for g, (_, answers) in enumerate(groups)]

    def _score_requests(self, pairs: list[tuple[list[int], list[int]]], adapter: Adapter | None, *,
                        read_cache: bool) -> list[Any]:
        """The answers' total log p, None where the cache hit covered a position whose log p is
        needed (only when `read_cache`): one `_run` call, or with `read_cache` one per batch that
        cannot be preempted (module docstring); no cache is read when that cannot be known."""
        read_cache = read_cache and self.kv_blocks is not None
        batches = self._unpreemptable(pairs) if read_cache else [list(range(len(pairs)))]
        result: list[float | None] = [None] * len(pairs)
        for batch in batches:
            got = self._score_call([pairs[i] for i in batch], adapter, read_cache=read_cache)
            for i, g in zip(batch, got):
                result[i] = g
        return result

    def _unpreemptable(self, pairs: list[tuple[list[int], list[int]]]) -> list[list[int]]:
        """Consecutive batches of `pairs` (indices) whose blocks, prompt + answer + the one token
        sampled per request, fit the idle engine's free blocks together (at least one each)."""
        free, size = self.kv_blocks  # type: ignore[misc]
        batches: list[list[int]] = []
        used = free + 1  # start a new batch at once
        for i, (p, a) in enumerate(pairs):
            need = -(-(len(p) + len(a) + 1) // size)
            if used + need > free:
                batches.append([])
                used = 0
            batches[-1].append(i)
            used += need
        return batches

    def _score_call(self, pairs: list[tuple[list[int], list[int]]], adapter: Adapter | None, *,
                    read_cache: bool) -> list[float | None]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False,
                                skip_reading_prefix_cache=not read_cache)
        fulls = [p + a for p, a in pairs]
        lora = self._lora(adapter)
        t0 = time.perf_counter()
        try:
            outs = self._run([TokensPrompt(prompt_token_ids=f) for f in fulls], [params] * len(fulls),
                             None if lora is None else [lora] * len(fulls), show=False)
        finally:
            self.compute_s += time.perf_counter() - t0
        self.calls += 1
        result: list[float | None] = []
        for (prompt, _), full, o in zip(pairs, fulls, outs):
            cached = o.num_cached_tokens if read_cache else 0
            self.score_tokens += len(full) - max(0, cached or 0)
            if cached is None or cached < 0 or cached > len(prompt) - 1:
                result.append(None)  # unknown hit, or the first answer token's log p not computed
                continue
            result.append(_answer_logprob(o.prompt_logprobs, full, len(prompt)))
        return result

    def verify(self, requests: list[VerifyRequest]) -> list[list[dict[int, float]] | None]:
        """Top-k logprobs at every draft position, by prefill (`prompt_logprobs`), each prompt
        read from the prefix cache. A row is computed only from the request's first computed
        position on (v1/worker/gpu_model_runner.py:5338-5398 fills rows from num_computed_tokens on;
        rows before stay `LogprobsTensors.empty_cpu`, uninitialised), and `num_cached_tokens`
        reports the first scheduling only (v1/core/sched/scheduler.py:1074-1081): a preempted
        request re-reads the cache on resume (num_computed_tokens is reset to 0 in
        `_preempt_request`, scheduler.py:1593, and looked up again at :960). So calls are sized to
        fit the KV cache whole: preemption happens only when `allocate_slots` fails for a
        running request (scheduler.py:778-840; the other preemption, :2860, is
        `reset_prefix_cache`, which a run never calls while requests are in flight); then the
        first scheduling is the only one, and a draft whose hit reached an answer row the caller
        does not hold (`VerifyRequest.known`) is verified again without reading the cache; the
        rows the caller holds come back empty. Adapter and no-adapter requests never share
        a call (vllm_sampler.py's docstring)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        out: list[list[dict[int, float]] | None] = [None] * len(requests)
        cache = self.llm.llm_engine.vllm_config.cache_config
        blocks, size = cache.num_gpu_blocks, cache.block_size
        can_read = bool(blocks and size)
        with_adapter = [i for i, r in enumerate(requests) if r.adapter is not None]
        without = [i for i, r in enumerate(requests) if r.adapter is None]
        again: list[int] = []
        for group in (with_adapter, without):
            for batch in _fit(group, requests, blocks, size) if can_read else [group]:
                if batch:
                    again += self._verify_call(requests, batch, out, read_cache=can_read,
                                               params=(SamplingParams, TokensPrompt))
        for group in ([i for i in again if requests[i].adapter is not None],
                      [i for i in again if requests[i].adapter is None]):
            if group:
                self.verify_retries += len(group)
                self._verify_call(requests, group, out, read_cache=False,
                                  params=(SamplingParams, TokensPrompt))
        return out

    def _verify_call(self, requests: list[VerifyRequest], batch: list[int],
                     out: list[list[dict[int, float]] | None], *, read_cache: bool,
                     params: tuple) -> list[int]:
        """One `_run` call; fills `out` for the batch, returns the requests whose cache hit
        reached an answer row (only when `read_cache`)."""
        sampling_params, tokens_prompt = params
        fulls = [list(requests[i].prompt) + list(requests[i].answer) for i in batch]
        ps = [sampling_params(max_tokens=1, detokenize=False,
                              prompt_logprobs=min(requests[i].top_logprobs, self.max_top),
                              skip_reading_prefix_cache=not read_cache) for i in batch]
        loras = ([self._lora(requests[i].adapter) for i in batch]
                 if requests[batch[0]].adapter is not None else None)
        t0 = time.perf_counter()
        try:
            outs = self._run([tokens_prompt(prompt_token_ids=f) for f in fulls], ps, loras, show=False)
        finally:
            self.compute_s += time.perf_counter() - t0
        self.calls += 1
        again = []
        for i, full, o in zip(batch, fulls, outs):
            n = len(requests[i].prompt)
            cached = o.num_cached_tokens if read_cache else 0
            self.verify_tokens += len(full) - max(0, cached or 0)
            # the row of answer position j is computed iff n + j - 1 >= cached (rows before the
            # hit stay uninitialised, see `verify`); the caller holds the first `known` rows
            if cached is None or cached < 0 or cached > n - 1 + requests[i].known:
                again.append(i)
                continue
            held = n + requests[i].known  # rows the caller holds: left empty here
            out[i] = [{} if pos < held else
                      {int(t): float(lp.logprob) for t, lp in o.prompt_logprobs[pos].items()}
                      for pos in range(n, len(full))]
        return again


def _fit(group: list[int], requests: list[VerifyRequest], blocks: int, size: int) -> list[list[int]]:
    """`group` in batches whose KV blocks (every request whole, plus one token) fit `blocks` less
    the null block (v1/core/block_pool.py:187), so no request of a batch can be preempted."""
    batches: list[list[int]] = [[]]
    used = 0
    for i in group:
        need = -(-(len(requests[i].prompt) + len(requests[i].answer) + 1) // size)
        if batches[-1] and used + need > blocks - 1:
            batches.append([])
            used = 0
        batches[-1].append(i)
        used += need
    return batches


def _answer_logprob(rows: Any, full: list[int], start: int) -> float:
    """Sum of the log p of `full[start:]` from vLLM's `prompt_logprobs` (a {token: Logprob} per
    position); a row without its token is a malformed output (SamplerError)."""
    total = 0.0
    for pos in range(start, len(full)):
        row = rows[pos] if rows is not None and pos < len(rows) else None
        lp = row.get(full[pos]) if row is not None else None
        if lp is None:
            raise SamplerError(f"vLLM returned no log p for prompt position {pos}")
        total += lp.logprob
    return total

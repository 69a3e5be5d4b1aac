"""vLLM sampler: one engine per worker serving every task's LoRA adapter in batched generate calls.

Works around a LoRA bug measured on vLLM 0.32.0 (CPU): prompts without an adapter batched with
adapter prompts silently get an adapter, so they go in their own `generate` call. Batched
`prompt_logprobs` under LoRA crashed the engine unless LoRA is restricted to the linear layers
(`lora_target_modules`, which the engine always sets); so restricted they match a peft forward
pass (CPU, within 1e-4), and `score_groups` scores many answers in one call, reading each
prompt's blocks from the prefix cache (requests with `prompt_logprobs` skip it by default).

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

Requests go in with `LLM.enqueue` (which returns their request ids) and come back from
`LLM.wait_for_completion`, matched by id and checked against the prompt sent. In vLLM 0.32.0 an
exception inside a call leaves its unfinished requests in the engine, and the next call returns
them too (`_run_engine` collects every finished request, sorted by id): so a failed call aborts its
requests, and if even that fails the engine is rebuilt before the next call. Outputs are never
paired with prompts by position alone. A heartbeat is sent for every finished request (through the
progress-bar hook `wait_for_completion` accepts).
"""

from __future__ import annotations

import functools
import io
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from submission.config import Config
from submission.errors import SamplerError, SamplerLost
from submission.answers.sampling import Adapter, GenRequest, Generation, VerifyRequest

MAX_LOGPROBS = 20  # vLLM's default max_logprobs


class StaleOutputError(SamplerError, RuntimeError):
    """vLLM returned an output that does not belong to the prompts of this call."""


def _no_beat() -> None:
    pass


class VLLMSampler:
    name = "vllm"

    def __init__(self, model_path: str | Path, cfg: Config, *, stop_ids: list[int],
                 enable_lora: bool = True, dtype: str | None = None,
                 engine_kwargs: dict[str, Any] | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from submission.runtime.memory import unplanned_vllm_kwargs

        s = cfg.sampling
        kwargs: dict[str, Any] = dict(
            model=str(model_path), tokenizer=str(model_path), seed=s.seed,
            max_num_seqs=s.max_num_seqs, enable_prefix_caching=True,
            enforce_eager=s.enforce_eager, disable_log_stats=True)
        if dtype is not None:
            kwargs["dtype"] = dtype
        # Memory and LoRA sizes: the memory plan's choices on a GPU, the config's elsewhere. Both
        # keep max_cpu_loras = max_loras (every extra CPU slot pins a whole adapter in host memory)
        # and restrict LoRA to the linear layers (lora_target_modules), which is also what keeps
        # batched prompt_logprobs under LoRA from failing in vLLM 0.32.0.
        memory = dict(engine_kwargs) if engine_kwargs is not None else unplanned_vllm_kwargs(cfg)
        if not enable_lora:
            memory = {k: v for k, v in memory.items() if "lora" not in k}
        else:
            kwargs["enable_lora"] = True
        kwargs.update(memory)
        self.kwargs = kwargs
        self.enable_lora = enable_lora
        self.stop_ids = list(stop_ids)
        self.llm = self._start()
        self.kv_blocks = self._kv_blocks()
        # top-k logprobs beyond the vocabulary (or vLLM's max_logprobs, 20) fail inside the engine
        self.max_top = min(MAX_LOGPROBS, self.llm.llm_engine.model_config.get_vocab_size())
        self.calls = 0
        self.restarts = 0  # engines rebuilt after a failed call could not be cleaned up
        self.compute_s = 0.0  # seconds inside LLM.generate
        self.score_tokens = 0  # prompt tokens prefilled for scoring (prefix-cache hits excluded)
        self.score_retries = 0  # answers scored again because a cache hit reached into them
        self.prefill_tokens = 0  # prompt tokens generate calls computed (prefix-cache hits excluded)
        self.verify_tokens = 0  # tokens draft verification computed (prefix-cache hits excluded)
        self.verify_retries = 0  # drafts verified again because a cache hit reached into them
        self.beat: Callable[[], None] = _no_beat  # heartbeat per finished request
        self._broken = False

    def _start(self) -> Any:
        from vllm import LLM

        from submission.runtime.vllm_tmp import engine_tmpdir

        with engine_tmpdir():  # vLLM's vllm_dist_* file: removed even after a failed start
            return LLM(**self.kwargs)

    def _kv_blocks(self) -> tuple[int, int] | None:
        """(KV blocks free in the idle engine, tokens per block); None when vLLM does not say (an
        engine in another process), and then scoring reads no cache. One block is vLLM's null
        block (vllm/v1/core/block_pool.py:187)."""
        cache = self.llm.llm_engine.vllm_config.cache_config
        blocks, size = getattr(cache, "num_gpu_blocks", None), getattr(cache, "block_size", None)
        if not isinstance(blocks, int) or not isinstance(size, int) or blocks < 2 or size < 1:
            return None
        return blocks - 1, size

    def _restart(self) -> None:
        """Drop the engine (its unfinished requests with it) and build a new one; SamplerLost if
        that fails (the engine then switches samplers for good)."""
        import gc

        from submission.runtime.faults import engine_fault

        try:
            engine_fault("vllm_rebuild")
            self.llm = None
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:
                pass
            self.llm = self._start()
        except Exception as exc:  # noqa: BLE001 - vLLM fails to start in many ways; all mean lost
            raise SamplerLost(f"vLLM could not be rebuilt: {type(exc).__name__}: {exc}"[:2000]) from exc
        self.kv_blocks = self._kv_blocks()
        self.restarts += 1
        self._broken = False

    def _run(self, prompts: list, params: list, loras: Any, show: bool) -> list:
        """Outputs of `prompts`, in their order, matched by request id; a failure (any exception,
        an interrupt) aborts this call's requests so none can reach a later call."""
        if self._broken:
            self._restart()
        ids: list[str] = []
        try:
            ids = self.llm.enqueue(prompts, params, lora_request=loras, use_tqdm=False)
            outs = self.llm.wait_for_completion(use_tqdm=self._bar(show))
        except BaseException as exc:
            try:
                if ids:
                    self.llm.llm_engine.abort_request(ids, internal=True)
                if self.llm.llm_engine.has_unfinished_requests():
                    self._broken = True
            except Exception:  # noqa: BLE001 - an engine that cannot abort is rebuilt, whatever it raised
                self._broken = True
            from vllm.exceptions import VLLMError

            if isinstance(exc, VLLMError):  # e.g. a prompt longer than max_model_len
                raise SamplerError(f"vLLM: {exc}") from exc
            raise
        by_id = {o.request_id: o for o in outs}
        result = []
        for rid, prompt in zip(ids, prompts):
            out = by_id.get(_external_id(rid))
            if out is None or list(out.prompt_token_ids or []) != list(prompt["prompt_token_ids"]):
                self._broken = True
                raise StaleOutputError(f"vLLM returned no output for request {rid} of this call")
            result.append(out)
        return result

    def _bar(self, show: bool) -> Callable[..., Any]:
        """A progress-bar factory for vLLM whose every update is a heartbeat."""
        from tqdm.auto import tqdm

        beat = self.beat

        class BeatBar(tqdm):
            def update(self, n: float | None = 1) -> bool | None:
                beat()
                return super().update(n)

        return functools.partial(BeatBar, leave=False, disable=False, file=None if show else _NullIO())

    def _lora(self, adapter: Adapter | None) -> Any:
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(adapter.name, adapter.int_id, adapter.path)

    def generate(self, requests: list[GenRequest]) -> list[list[Generation]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        results: list[list[Generation]] = [[] for _ in requests]
        with_adapter = [i for i, r in enumerate(requests) if r.adapter is not None]
        without = [i for i, r in enumerate(requests) if r.adapter is None]
        for group in (with_adapter, without):  # never mix: see module docstring
            if not group:
                continue
            prompts = [TokensPrompt(prompt_token_ids=list(requests[i].prompt)) for i in group]
            params = [SamplingParams(n=requests[i].n, temperature=requests[i].temperature,
                                     max_tokens=requests[i].max_tokens, stop_token_ids=self.stop_ids,
                                     logprobs=min(requests[i].top_logprobs, self.max_top),
                                     detokenize=False)
                      for i in group]
            loras = [self._lora(requests[i].adapter) for i in group] if group is with_adapter else None
            t0 = time.perf_counter()
            try:
                outs = self._run(prompts, params, loras, show=True)
            finally:
                self.compute_s += time.perf_counter() - t0
            self.calls += 1
            self.prefill_tokens += sum(len(requests[i].prompt) - max(0, o.num_cached_tokens or 0)
                                       for i, o in zip(group, outs))
            for i, out in zip(group, outs):
                k = requests[i].top_logprobs
                results[i] = [Generation(list(c.token_ids), float(c.cumulative_logprob or 0.0),
                                         _top(c.logprobs, k) if k else None) for c in out.outputs]
        return results

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
        first scheduling is the only one, and a draft whose hit reached its first answer row is
        verified again without reading the cache. Adapter and no-adapter requests never share
        a call (module docstring)."""
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
            if cached is None or cached < 0 or cached > n - 1:
                again.append(i)
                continue
            out[i] = [{int(t): float(lp.logprob) for t, lp in o.prompt_logprobs[pos].items()}
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


def _top(logprobs: Any, k: int) -> list[dict[int, float]]:
    """vLLM's per-position {token: Logprob} (top k plus the chosen token) as plain floats."""
    return [{int(t): float(lp.logprob) for t, lp in pos.items()} for pos in (logprobs or [])]


def _external_id(internal: str) -> str:
    """The request id outputs carry, from the one `enqueue` returns: vLLM 0.32.0 makes the internal
    id `{external}-{8 random characters}` (InputProcessor.assign_request_id) and the LLM class
    numbers external ids 0, 1, 2, ... (no dash), so the external id is what precedes the last dash."""
    return internal.rsplit("-", 1)[0]


class _NullIO(io.StringIO):
    """Where a hidden progress bar writes (vLLM reads the bar's elapsed time, so it must exist)."""

    def write(self, text: str) -> int:
        return len(text)

"""vLLM sampler: one engine per worker serving every task's LoRA adapter in batched generate calls.

Works around a LoRA bug measured on vLLM 0.32.0 (CPU): prompts without an adapter batched with
adapter prompts silently get an adapter, so they go in their own `generate` call. Batched
`prompt_logprobs` under LoRA crashed the engine unless LoRA is restricted to the linear layers
(`lora_target_modules`, which the engine always sets); so restricted they match a peft forward
pass (CPU, within 1e-4), and `score_groups` scores many answers in one call, reading each
prompt's blocks from the prefix cache (requests with `prompt_logprobs` skip it by default):
that scoring, draft verification and when a cache read can be trusted are in vllm_prefill.py.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from submission.config import Config
from submission.environment import set_offline
from submission.errors import SamplerError, SamplerLost
from submission.answers.sampling import Adapter, GenRequest, Generation, Heartbeat
from submission.model.backends.vllm_prefill import VLLMPrefill

MAX_LOGPROBS = 20  # vLLM's default max_logprobs


class StaleOutputError(SamplerError, RuntimeError):
    """vLLM returned an output that does not belong to the prompts of this call."""


class VLLMSampler(VLLMPrefill, Heartbeat):
    name = "vllm"

    def __init__(self, model_path: str | Path, cfg: Config, *, stop_ids: list[int],
                 enable_lora: bool = True, dtype: str | None = None,
                 engine_kwargs: dict[str, Any] | None = None) -> None:
        set_offline(os.environ, force=False)
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

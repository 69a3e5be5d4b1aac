"""vLLM sampler: one engine per worker serving every task's LoRA adapter in batched generate calls.

Works around two LoRA bugs measured on vLLM 0.32.0 (CPU): prompts without an adapter batched with
adapter prompts silently get an adapter, so they go in their own `generate` call; batched
`prompt_logprobs` under LoRA crash the engine, so re-scoring sends one prompt per call.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..config import Config
from ..sample import Adapter, GenRequest, Generation

MAX_LOGPROBS = 20  # vLLM's default max_logprobs
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's accepted max_lora_rank values


def max_lora_rank(r: int) -> int:
    return next(v for v in MAX_LORA_RANKS if v >= r)


class VLLMSampler:
    name = "vllm"

    def __init__(self, model_path: str | Path, cfg: Config, *, stop_ids: list[int],
                 enable_lora: bool = True, dtype: str | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        s = cfg.sampling
        kwargs: dict[str, Any] = dict(
            model=str(model_path), tokenizer=str(model_path), seed=s.seed,
            max_model_len=cfg.model.max_seq_len, max_num_seqs=s.max_num_seqs,
            enable_prefix_caching=True, enforce_eager=s.enforce_eager,
            gpu_memory_utilization=s.gpu_memory_utilization, disable_log_stats=True)
        if dtype is not None:
            kwargs["dtype"] = dtype
        if enable_lora:
            kwargs.update(enable_lora=True, max_loras=s.max_loras,
                          max_lora_rank=max_lora_rank(cfg.ttt.r), max_cpu_loras=max(s.max_loras, 16))
        self.enable_lora = enable_lora
        self.stop_ids = list(stop_ids)
        self.llm = LLM(**kwargs)
        # top-k logprobs beyond the vocabulary (or vLLM's max_logprobs, 20) fail inside the engine
        self.max_top = min(MAX_LOGPROBS, self.llm.llm_engine.model_config.get_vocab_size())
        self.calls = 0
        self.compute_s = 0.0  # seconds inside LLM.generate

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
            outs = self.llm.generate(prompts, params, lora_request=loras, use_tqdm=True)
            self.compute_s += time.perf_counter() - t0
            self.calls += 1
            for i, out in zip(group, outs):
                k = requests[i].top_logprobs
                results[i] = [Generation(list(c.token_ids), float(c.cumulative_logprob or 0.0),
                                         _top(c.logprobs, k) if k else None) for c in out.outputs]
        return results

    def score(self, prompt: list[int], answer: list[int], adapter: Adapter | None) -> float:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        full = list(prompt) + list(answer)
        t0 = time.perf_counter()
        out = self.llm.generate([TokensPrompt(prompt_token_ids=full)], params,
                                lora_request=self._lora(adapter), use_tqdm=False)[0]
        self.compute_s += time.perf_counter() - t0
        self.calls += 1
        total = 0.0
        for pos in range(len(prompt), len(full)):
            total += out.prompt_logprobs[pos][full[pos]].logprob
        return total


def _top(logprobs: Any, k: int) -> list[dict[int, float]]:
    """vLLM's per-position {token: Logprob} (top k plus the chosen token) as plain floats."""
    return [{int(t): float(lp.logprob) for t, lp in pos.items()} for pos in (logprobs or [])]

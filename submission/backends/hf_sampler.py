"""transformers sampler and forward-pass scorer over the trainer's peft model.

The fallback when vLLM cannot run (T4, or not installed), and the re-scorer that uses the weights
training used (on a GPU the trainer's 4-bit base; vLLM serves the 16-bit one). It swaps adapter
weights into the one live peft model (`LoRATrainer.load_adapter_weights`); `adapter=None` runs the
base model with the adapter disabled. Generation is one prompt at a time: slow, but exact and simple.

Scoring has two paths. `score` is one forward pass over prompt + answer (no KV cache). `score_groups`
computes each prompt's KV once and scores all its answers against it, batched: the prompt's tokens
go through the model once instead of once per answer. The first group it scores is also scored by
`score` and compared; if the two disagree (or the model cannot take a cache), the prefix path is
switched off for good and every answer gets its own `score` call, counted and reported.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..sample import Adapter, GenRequest, Generation
from ..train import LoRATrainer


LOGITS_ENV = "UNSLOTH_RETURN_LOGITS"
# Answers batched against one prompt's KV: the batch holds the prompt's KV once per answer, so
# answers x (prompt + answer) tokens stay under this (16k tokens of KV: ~2.4 GB for a 4B Qwen3 in bf16).
BATCH_TOKENS = 16384
KV_TOL = 2e-2  # prefix-KV vs one-pass agreement on the first group: |a - b| <= KV_TOL * max(1, |b|)
# (CPU fp32 agrees to ~1e-5; bf16 kernels differ by rounding; a cache used wrongly is off by whole nats)


class PrefixCacheError(RuntimeError):
    """The model's forward returned no usable KV cache for the prefix path."""


# What a model that cannot reuse its cache raises (an unsupported cache class, shapes that do not
# line up); the prefix path then falls back to one forward pass per answer. Out-of-memory is not a
# reason to switch it off: batches are halved, and at one answer the error propagates.
KV_ERRORS = (RuntimeError, TypeError, ValueError, AttributeError, IndexError, KeyError,
             NotImplementedError)


def _no_beat() -> None:
    pass


def _no_count(name: str) -> None:
    pass


class HFSampler:
    name = "transformers"

    def __init__(self, trainer: LoRATrainer, *, stop_ids: list[int], pad_id: int) -> None:
        self.trainer, self.model = trainer, trainer.model
        self.stop_ids, self.pad_id = list(stop_ids), pad_id
        self._loaded: str | None = None
        self.calls = 0
        self.compute_s = 0.0  # seconds inside generate and forward calls
        self.beat: Callable[[], None] = _no_beat  # heartbeat after every request and forward pass
        self.count: Callable[[str], None] = _no_count  # counts a fallback of the scoring paths
        self.batch_tokens = BATCH_TOKENS
        self.score_tokens = 0  # tokens that went through forward passes for scoring (padding too)
        self.score_forwards = 0  # forward passes for scoring
        # The prefix path's state, reported as is (engine.info["rescore_prefix_kv"]).
        self.prefix_kv: dict[str, Any] = {"enabled": True, "checked": False}

    @contextlib.contextmanager
    def _logits(self) -> Iterator[None]:
        """unsloth's forward returns no logits unless UNSLOTH_RETURN_LOGITS=1; set it only around
        generation and scoring, never during training (where logits would cost memory)."""
        if self.trainer.backend != "unsloth":
            yield
            return
        before = os.environ.get(LOGITS_ENV)
        os.environ[LOGITS_ENV] = "1"
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(LOGITS_ENV, None)
            else:
                os.environ[LOGITS_ENV] = before

    def _use(self, adapter: Adapter | None) -> Any:
        if adapter is None:
            return self.model.disable_adapter()
        if self._loaded != adapter.path:
            self.trainer.load_adapter_weights(adapter.path)
            self._loaded = adapter.path
        return contextlib.nullcontext()

    def forget_loaded(self) -> None:
        """Call after the live adapter weights change (training) so the next use reloads."""
        self._loaded = None

    def generate(self, requests: list[GenRequest]) -> list[list[Generation]]:
        import torch

        results = []
        start = time.perf_counter()
        self.trainer.set_mode(training=False)
        for r in requests:
            ids = torch.tensor([list(r.prompt)], device=self.trainer.device)
            gens: list[Generation] = []
            with self._use(r.adapter), torch.no_grad(), self._logits():
                for _ in range(r.n):
                    sample = r.temperature > 0
                    out = self.model.generate(
                        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=r.max_tokens,
                        do_sample=sample, temperature=r.temperature if sample else None, top_p=None,
                        top_k=None, eos_token_id=self.stop_ids, pad_token_id=self.pad_id,
                        output_scores=True, return_dict_in_generate=True, use_cache=True)
                    new = out.sequences[0, ids.shape[1]:]
                    steps = torch.stack([s[0] for s in out.scores]).float().log_softmax(-1)
                    chosen = steps.gather(1, new[:, None])[:, 0]
                    top = None
                    if r.top_logprobs:
                        vals, idx = steps.topk(min(r.top_logprobs, steps.shape[1]), dim=-1)
                        top = [dict(zip(i.tolist(), v.tolist())) | {int(t): float(c)}
                               for i, v, t, c in zip(idx, vals, new, chosen)]
                    gens.append(Generation(new.tolist(), float(chosen.sum()), top))
            self.calls += 1
            results.append(gens)
            self.beat()
        self.compute_s += time.perf_counter() - start
        return results

    def score(self, prompt: list[int], answer: list[int], adapter: Adapter | None) -> float:
        """One forward pass over prompt + answer; `use_cache=False`: nothing is reused, and unsloth
        keeps no cache around."""
        import torch

        start = time.perf_counter()
        full = torch.tensor([list(prompt) + list(answer)], device=self.trainer.device)
        self.trainer.set_mode(training=False)
        with self._use(adapter), torch.no_grad(), self._logits():
            logits = self.model(input_ids=full, use_cache=False).logits[0, len(prompt) - 1:-1].float()
        self.calls += 1
        self.score_forwards += 1
        self.score_tokens += full.shape[1]
        lp = float(logits.log_softmax(-1).gather(1, full[0, len(prompt):, None]).double().sum())
        self.compute_s += time.perf_counter() - start
        self.beat()
        return lp

    def score_groups(self, groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
                     adapter: Adapter | None) -> list[list[float]]:
        """Per group (prompt, answers): each answer's total log p after the prompt, the prompt's
        KV computed once per group (see the module docstring for the check and the fallback)."""
        return [self._score_group(list(p), [list(a) for a in answers], adapter)
                for p, answers in groups]

    def _score_group(self, prompt: list[int], answers: list[list[int]],
                     adapter: Adapter | None) -> list[float]:
        if not answers:
            return []
        if not self.prefix_kv["enabled"]:
            return [self.score(prompt, a, adapter) for a in answers]
        try:
            got = self._prefix_scores(prompt, answers, adapter)
        except KV_ERRORS as exc:
            if _out_of_memory(exc):
                raise
            self._switch_off(f"{type(exc).__name__}: {exc}"[:500])
            return [self.score(prompt, a, adapter) for a in answers]
        if self.prefix_kv["checked"]:
            return got
        ref = [self.score(prompt, a, adapter) for a in answers[:2]]
        diff = max(abs(g - r) for g, r in zip(got, ref))
        ok = all(abs(g - r) <= KV_TOL * max(1.0, abs(r)) for g, r in zip(got, ref))
        self.prefix_kv.update(checked=True, max_diff=diff, answers_compared=len(ref))
        if ok:
            return got
        self._switch_off(f"prefix-KV scores differ from one-pass scores by {diff:.3g}")
        return ref + [self.score(prompt, a, adapter) for a in answers[2:]]

    def _switch_off(self, why: str) -> None:
        self.prefix_kv.update(enabled=False, error=why)
        self.count("rescore_prefix_kv_off_use_one_pass")

    def _prefix_scores(self, prompt: list[int], answers: list[list[int]],
                       adapter: Adapter | None) -> list[float]:
        """The prompt once with `use_cache=True` (deliberately: its KV is what every answer reuses),
        then the answers in batches against copies of that KV. The log p of an answer's first token
        comes from the prompt's last position; the rest from the batch (right-padded: under a
        causal mask a real token never sees the padding after it)."""
        import torch

        start = time.perf_counter()
        dev = self.trainer.device
        self.trainer.set_mode(training=False)
        scores = [0.0] * len(answers)
        try:
            with self._use(adapter), torch.no_grad(), self._logits():
                ids = torch.tensor([prompt], device=dev)
                out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
                self._forward_done(ids.numel())
                cache = out.past_key_values
                if cache is None:
                    raise PrefixCacheError("the model returned no KV cache")
                first = out.logits[0, -1].float().log_softmax(-1)
                for i, a in enumerate(answers):
                    scores[i] = float(first[a[0]])
                del out, first
                pending = self._batches(answers, len(prompt))
                while pending:
                    batch = pending.pop()
                    try:
                        self._score_batch(batch, answers, cache, len(prompt), scores)
                    except torch.OutOfMemoryError:
                        if len(batch) == 1:
                            raise
                        self.batch_tokens = max(1, self.batch_tokens // 2)  # for the rest of the run
                        self.count("rescore_prefix_kv_batch_halved")
                        if dev.type == "cuda":
                            torch.cuda.empty_cache()
                        pending += [batch[:len(batch) // 2], batch[len(batch) // 2:]]
        finally:
            self.compute_s += time.perf_counter() - start
        self.calls += 1
        return scores

    def _batches(self, answers: list[list[int]], prompt_len: int) -> list[list[int]]:
        """Indices of the answers longer than one token, by length, in batches whose
        answers x (prompt + longest answer) tokens fit `batch_tokens` (at least one answer)."""
        order = sorted((i for i, a in enumerate(answers) if len(a) > 1), key=lambda i: len(answers[i]))
        batches: list[list[int]] = []
        for i in order:
            cur = batches[-1] if batches else None
            if cur is not None and (len(cur) + 1) * (prompt_len + len(answers[i])) <= self.batch_tokens:
                cur.append(i)
            else:
                batches.append([i])
        return batches

    def _score_batch(self, batch: list[int], answers: list[list[int]], cache: Any, prompt_len: int,
                     scores: list[float]) -> None:
        import torch

        dev = self.trainer.device
        width = max(len(answers[i]) for i in batch) - 1
        x = torch.full((len(batch), width), self.pad_id, dtype=torch.long, device=dev)
        for row, i in enumerate(batch):
            x[row, :len(answers[i]) - 1] = torch.tensor(answers[i][:-1], device=dev)
        pos = torch.arange(prompt_len, prompt_len + width, device=dev).expand(len(batch), -1)
        logits = self.model(input_ids=x, position_ids=pos, past_key_values=_repeat(cache, len(batch)),
                            use_cache=True).logits
        self._forward_done(x.numel())
        got = []
        for row, i in enumerate(batch):
            target = torch.tensor(answers[i][1:], device=dev)
            lp = logits[row, :len(target)].float().log_softmax(-1)
            got.append(float(lp.gather(1, target[:, None]).double().sum()))  # summed in fp64, as `score`
        for i, g in zip(batch, got):
            scores[i] += g

    def _forward_done(self, tokens: int) -> None:
        self.score_forwards += 1
        self.score_tokens += tokens
        self.beat()


def _out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError)


def _repeat(cache: Any, n: int) -> Any:
    """A copy of a batch-1 KV cache repeated `n` times in the batch dimension (the forward pass
    appends to the cache it is given, so the prompt's own cache is never passed)."""
    if hasattr(cache, "batch_repeat_interleave"):  # transformers Cache classes
        out = copy.deepcopy(cache)
        if n > 1:
            out.batch_repeat_interleave(n)
        return out
    if isinstance(cache, (tuple, list)):  # legacy ((key, value) per layer)
        return tuple(tuple(t.repeat_interleave(n, dim=0) for t in layer) for layer in cache)
    raise PrefixCacheError(f"cannot batch a {type(cache).__name__} KV cache")

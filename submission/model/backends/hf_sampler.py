"""transformers sampler and forward-pass scorer over the trainer's peft model.

The fallback when vLLM is absent or cannot fit (memory plan), and the re-scorer that uses the weights
training used (on a GPU the trainer's 4-bit base; vLLM serves the 16-bit one). It swaps adapter
weights into the one live peft model (`LoRATrainer.load_adapter_weights`); `adapter=None` runs the
base model with the adapter disabled. Generation is one prompt at a time: slow, but exact and simple.

Scoring. `score` is one forward pass over prompt + answer (no KV cache). `score_groups` computes
each prompt's KV once and scores all its answers against it, so the prompt's tokens go through the
model once instead of once per answer. Two modes: `tree` puts the answers in one forward pass as a
prefix tree (answers sharing their first tokens share them; a custom 4D attention mask), `batch`
gives each answer its own copy of the prompt's KV in a padded batch. The first group a mode scores
is also scored by `score` and compared; if they disagree, or the model cannot take the cache or
the mask, that mode is switched off for good and the next takes over (tree, batch, then one pass
per answer), counted and reported.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from submission.errors import SubmissionError, reraise_unless_ours
from submission.answers.sampling import Adapter, GenRequest, Generation, Heartbeat, VerifyRequest
from submission.model.train import LoRATrainer
from submission.events import PREFIX_BATCH_HALVED, PREFIX_BATCH_OFF, PREFIX_TREE_HALVED, PREFIX_TREE_OFF


LOGITS_ENV = "UNSLOTH_RETURN_LOGITS"
PREFIX_MODES = ("tree", "batch")  # prefix-KV paths, preferred first; then one pass per answer
# Chunk limits of the two modes (halved on out-of-memory). tree: attention-mask elements, answer
# tokens x (prompt + answer tokens): 2**26 is 128 MiB in bf16. batch: the batch holds the prompt's
# KV once per answer; 16k tokens of KV are ~2.4 GB for a 4B Qwen3 in bf16.
CHUNK_LIMIT = {"tree": 2**26, "batch": 16384}
KV_TOL = 2e-2  # a mode's first group vs one pass per answer: |a - b| <= KV_TOL * max(1, |b|)
# (CPU fp32 agrees to ~1e-5; bf16 kernels differ by rounding; a cache used wrongly is off by whole nats)


# The prefix paths' fallback counters (named and decided in events.py)
PREFIX_OFF = {"tree": PREFIX_TREE_OFF, "batch": PREFIX_BATCH_OFF}
CHUNK_HALVED = {"tree": PREFIX_TREE_HALVED, "batch": PREFIX_BATCH_HALVED}


class PrefixCacheError(SubmissionError, RuntimeError):
    """The model's forward returned no usable KV cache for the prefix path."""


# What a model that cannot reuse its cache raises (PrefixCacheError for an unsupported cache
# class, RuntimeError for shapes that do not line up, ValueError for arguments the model refuses,
# e.g. a 4D mask); the prefix path then falls back to one forward pass per answer. Out-of-memory
# is not a reason to switch it off: batches are halved, and at one answer the error propagates.
# Programming errors (AttributeError, KeyError, TypeError, ...) are not caught.
KV_ERRORS = (RuntimeError, ValueError)


def _no_count(name: str) -> None:
    pass


class HFSampler(Heartbeat):
    name = "transformers"

    def __init__(self, trainer: LoRATrainer, *, stop_ids: list[int], pad_id: int) -> None:
        self.trainer, self.model = trainer, trainer.model
        self.stop_ids, self.pad_id = list(stop_ids), pad_id
        self._loaded: str | None = None
        self.calls = 0
        self.compute_s = 0.0  # seconds inside generate and forward calls
        self.count: Callable[[str], None] = _no_count  # counts a fallback of the scoring paths
        self.chunk_limit = dict(CHUNK_LIMIT)
        self.score_tokens = 0  # tokens that went through forward passes for scoring (padding too)
        self.score_forwards = 0  # forward passes for scoring
        self.prefill_tokens = 0  # prompt tokens generate calls computed
        self.verify_tokens = 0  # tokens draft verification computed
        # The prefix paths' state, reported as is (engine.info["rescore_prefix_kv"]): the mode in
        # use, the modes checked (largest difference to one pass) and why a mode was switched off.
        self.prefix_kv: dict[str, Any] = {"mode": PREFIX_MODES[0], "checked": {}, "errors": {}}

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

    def count_fallbacks(self, count: Callable[[str], None]) -> None:
        """Where the scoring paths count their fallbacks from now on (a mode switched off, a chunk
        halved); nowhere before."""
        self.count = count

    def forget_loaded(self) -> None:
        """Call after the live adapter weights change (training) so the next use reloads."""
        self._loaded = None

    def generate(self, requests: list[GenRequest]) -> list[list[Generation]]:
        results = []
        start = time.perf_counter()
        self.trainer.set_mode(training=False)
        for r in requests:
            ids = torch.tensor([list(r.prompt)], device=self.trainer.device)
            self.prefill_tokens += len(r.prompt) * r.n
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

    def verify(self, requests: list[VerifyRequest]) -> list[list[dict[int, float]] | None]:
        """Top-k logprobs at every draft position: one forward pass over prompt + draft per
        request (no cache: every row is computed), as `generate` reports them."""
        start = time.perf_counter()
        self.trainer.set_mode(training=False)
        out: list[list[dict[int, float]] | None] = []
        for r in requests:
            full = torch.tensor([list(r.prompt) + list(r.answer)], device=self.trainer.device)
            with self._use(r.adapter), torch.no_grad(), self._logits():
                logits = self.model(input_ids=full, use_cache=False).logits[0, len(r.prompt) - 1:-1]
            steps = logits.float().log_softmax(-1)
            target = full[0, len(r.prompt):]
            chosen = steps.gather(1, target[:, None])[:, 0]
            vals, idx = steps.topk(min(r.top_logprobs, steps.shape[1]), dim=-1)
            out.append([dict(zip(i.tolist(), v.tolist())) | {int(t): float(c)}
                        for i, v, t, c in zip(idx, vals, target, chosen)])
            self.calls += 1
            self.verify_tokens += full.shape[1]
            self.beat()
        self.compute_s += time.perf_counter() - start
        return out

    def score(self, prompt: list[int], answer: list[int], adapter: Adapter | None) -> float:
        """One forward pass over prompt + answer; `use_cache=False`: nothing is reused, and unsloth
        keeps no cache around."""
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
        KV computed once per group (see the module docstring for the modes and the check)."""
        return [self._score_group(list(p), [list(a) for a in answers], adapter)
                for p, answers in groups]

    def _score_group(self, prompt: list[int], answers: list[list[int]],
                     adapter: Adapter | None) -> list[float]:
        mode = self.prefix_kv["mode"]
        if not answers or mode == "off":
            return [self.score(prompt, a, adapter) for a in answers]
        try:
            got = self._prefix_scores(prompt, answers, adapter, mode)
        except KV_ERRORS as exc:
            if _out_of_memory(exc):
                raise
            reraise_unless_ours(exc)
            self._demote(mode, f"{type(exc).__name__}: {exc}"[:500])
            return self._score_group(prompt, answers, adapter)
        if mode in self.prefix_kv["checked"]:
            return got
        ref = [self.score(prompt, a, adapter) for a in answers[:2]]
        diff = max(abs(g - r) for g, r in zip(got, ref))
        if all(abs(g - r) <= KV_TOL * max(1.0, abs(r)) for g, r in zip(got, ref)):
            self.prefix_kv["checked"][mode] = diff  # largest |difference| to one pass
            return got
        self._demote(mode, f"scores differ from one forward pass per answer by {diff:.3g}")
        return self._score_group(prompt, answers, adapter)

    def _demote(self, mode: str, why: str) -> None:
        """Switch `mode` off for good: the next mode (or one pass per answer) takes over."""
        nxt = PREFIX_MODES.index(mode) + 1
        self.prefix_kv["mode"] = PREFIX_MODES[nxt] if nxt < len(PREFIX_MODES) else "off"
        self.prefix_kv["errors"][mode] = why
        self.count(PREFIX_OFF[mode])

    def _prefix_scores(self, prompt: list[int], answers: list[list[int]], adapter: Adapter | None,
                       mode: str) -> list[float]:
        """The prompt once with `use_cache=True` (deliberately: its KV is what every answer reuses),
        then the answers against copies of that KV, in chunks (`tree` or `batch`, see
        `_score_tree` and `_score_batch`). The log p of an answer's first token comes from the
        prompt's last position. A chunk that runs out of memory is split, and the chunk size
        halved for the rest of the run (counted); a single answer that does not fit raises."""
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
                run = self._score_tree if mode == "tree" else self._score_batch
                pending = self._chunks(answers, len(prompt), mode)
                while pending:
                    chunk = pending.pop()
                    try:
                        run(chunk, answers, cache, len(prompt), scores)
                    except torch.OutOfMemoryError:
                        if len(chunk) == 1:
                            raise
                        self.chunk_limit[mode] = max(1, self.chunk_limit[mode] // 2)
                        self.count(CHUNK_HALVED[mode])
                        if dev.type == "cuda":
                            torch.cuda.empty_cache()
                        pending += [chunk[:len(chunk) // 2], chunk[len(chunk) // 2:]]
        finally:
            self.compute_s += time.perf_counter() - start
        self.calls += 1
        return scores

    def _chunks(self, answers: list[list[int]], prompt_len: int, mode: str) -> list[list[int]]:
        """Indices of the answers longer than one token, in order (sorted: answers that share
        their first tokens stay together), in chunks within `chunk_limit[mode]`: for `tree` the
        attention mask's elements, (answer tokens) x (prompt + answer tokens); for `batch` the
        KV held, answers x (prompt + longest answer) tokens. At least one answer per chunk."""
        longer = [i for i, a in enumerate(answers) if len(a) > 1]
        by = (lambda i: answers[i]) if mode == "tree" else (lambda i: len(answers[i]))
        order = sorted(longer, key=by)
        limit = self.chunk_limit[mode]
        chunks: list[list[int]] = []
        size = 0  # answer tokens in the last chunk
        for i in order:
            n = len(answers[i]) - 1
            if chunks:
                cur = chunks[-1] + [i]
                grown = ((size + n) * (prompt_len + size + n) if mode == "tree" else
                         len(cur) * (prompt_len + max(len(answers[j]) - 1 for j in cur)))
                if grown <= limit:
                    chunks[-1], size = cur, size + n
                    continue
            chunks.append([i])
            size = n
        return chunks

    def _score_tree(self, chunk: list[int], answers: list[list[int]], cache: Any, prompt_len: int,
                    scores: list[float]) -> None:
        """The chunk's answers as one prefix tree in one forward pass: each distinct answer prefix
        is one token, at position prompt + its depth, attending to the prompt and its own
        ancestors only (a 4D additive mask); answers that share their first tokens share them."""
        dev = self.trainer.device
        index: dict[tuple[int, int], int] = {}
        parent: list[int] = []
        tokens: list[int] = []
        depth: list[int] = []
        paths = []
        for i in chunk:
            node, path = -1, []
            for k, t in enumerate(answers[i][:-1]):
                nxt = index.get((node, t))
                if nxt is None:
                    nxt = index[(node, t)] = len(tokens)
                    parent.append(node)
                    tokens.append(t)
                    depth.append(k)
                path.append(nxt)
                node = nxt
            paths.append(path)
        n = len(tokens)
        seen = np.zeros((n, n), dtype=bool)  # seen[i, j]: node j is node i or an ancestor of it
        for i, p in enumerate(parent):
            if p >= 0:
                seen[i] = seen[p]
            seen[i, i] = True
        dtype = self.model.get_input_embeddings().weight.dtype  # the activations' (4-bit bases too)
        mask = torch.zeros((1, 1, n, prompt_len + n), dtype=dtype, device=dev)
        mask[0, 0, :, prompt_len:].masked_fill_(torch.from_numpy(~seen).to(dev), torch.finfo(dtype).min)
        ids = torch.tensor([tokens], device=dev)
        pos = torch.tensor([depth], device=dev) + prompt_len
        logits = self.model(input_ids=ids, position_ids=pos, attention_mask=mask,
                            past_key_values=_repeat(cache, 1), use_cache=True).logits[0]
        self._forward_done(n)
        got = []
        for i, path in zip(chunk, paths):
            target = torch.tensor(answers[i][1:], device=dev)
            lp = logits[torch.tensor(path, device=dev)].float().log_softmax(-1)
            got.append(float(lp.gather(1, target[:, None]).double().sum()))  # fp64 sum, as `score`
        for i, g in zip(chunk, got):
            scores[i] += g

    def _score_batch(self, chunk: list[int], answers: list[list[int]], cache: Any, prompt_len: int,
                     scores: list[float]) -> None:
        """The chunk's answers as a batch, each row against its own copy of the prompt's KV
        (right-padded: under a causal mask a real token never sees the padding after it)."""
        dev = self.trainer.device
        width = max(len(answers[i]) for i in chunk) - 1
        x = torch.full((len(chunk), width), self.pad_id, dtype=torch.long, device=dev)
        for row, i in enumerate(chunk):
            x[row, :len(answers[i]) - 1] = torch.tensor(answers[i][:-1], device=dev)
        pos = torch.arange(prompt_len, prompt_len + width, device=dev).expand(len(chunk), -1)
        logits = self.model(input_ids=x, position_ids=pos, past_key_values=_repeat(cache, len(chunk)),
                            use_cache=True).logits
        self._forward_done(x.numel())
        got = []
        for row, i in enumerate(chunk):
            target = torch.tensor(answers[i][1:], device=dev)
            lp = logits[row, :len(target)].float().log_softmax(-1)
            got.append(float(lp.gather(1, target[:, None]).double().sum()))  # fp64 sum, as `score`
        for i, g in zip(chunk, got):
            scores[i] += g

    def _forward_done(self, tokens: int) -> None:
        self.score_forwards += 1
        self.score_tokens += tokens
        self.beat()


def _out_of_memory(exc: BaseException) -> bool:
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

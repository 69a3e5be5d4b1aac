"""transformers sampler and forward-pass scorer over the trainer's peft model.

The fallback when vLLM cannot run (T4, or not installed), and the reference `score` that vLLM's
`prompt_logprobs` is checked against. It swaps adapter weights into the one live peft model
(`LoRATrainer.load_adapter_weights`); `adapter=None` runs the base model with the adapter disabled.
Generation is one prompt at a time: slow, but exact and simple.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..sample import Adapter, GenRequest, Generation
from ..train import LoRATrainer


LOGITS_ENV = "UNSLOTH_RETURN_LOGITS"


def _no_beat() -> None:
    pass


class HFSampler:
    name = "transformers"

    def __init__(self, trainer: LoRATrainer, *, stop_ids: list[int], pad_id: int) -> None:
        self.trainer, self.model = trainer, trainer.model
        self.stop_ids, self.pad_id = list(stop_ids), pad_id
        self._loaded: str | None = None
        self.calls = 0
        self.compute_s = 0.0  # seconds inside generate and forward calls
        self.beat: Callable[[], None] = _no_beat  # heartbeat after every request and score call

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
        import torch

        start = time.perf_counter()
        full = torch.tensor([list(prompt) + list(answer)], device=self.trainer.device)
        self.trainer.set_mode(training=False)
        with self._use(adapter), torch.no_grad(), self._logits():
            logits = self.model(input_ids=full, use_cache=False).logits[0, len(prompt) - 1:-1].float()
        self.calls += 1
        lp = float(logits.log_softmax(-1).gather(1, full[0, len(prompt):, None]).sum())
        self.compute_s += time.perf_counter() - start
        self.beat()
        return lp

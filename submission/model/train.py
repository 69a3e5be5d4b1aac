"""The one LoRA training loop, shared by every model loader (transformers+peft here, unsloth on GPU).

A `LoRATrainer` wraps a peft model whose adapter state right after `get_peft_model` is kept: every
task starts from it (`reset`), trains on its own samples until its planned steps or its deadline, and
saves a PEFT adapter directory vLLM loads. The loss is summed over target tokens and divided by the
number of targets of the whole optimizer step (the `num_items_in_batch` contract both transformers and
unsloth honour), so gradient accumulation equals one big batch. Under several processes
(`parallel`, see distributed.py) each rank trains its slice of every step with the count taken over
all ranks, so the update is still that of one big batch; `pack_tokens` lays a step's samples out as
packed rows (per-sequence attention through restarting position ids). This module loads no model itself.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from submission.config import TrainConfig
from submission.errors import NonFiniteLoss
from submission.model.ttt_data import TrainSample
from submission.runtime.files import replace_dir_atomic

IGNORE = -100


@dataclass
class TrainResult:
    steps: int  # optimizer steps taken
    planned_steps: int
    samples: int
    final_loss: float | None  # mean target-token loss of the last step
    first_loss: float | None
    seconds: float
    stopped_by_deadline: bool
    tokens: int = 0  # tokens of the samples trained on (for throughput)
    losses: list[float] = field(default_factory=list)  # loss of every step (the report's curve)


def planned_steps(n_samples: int, cfg: TrainConfig) -> int:
    """Optimizer steps for `n_samples` under the config (epochs, batch, accumulation, cap)."""
    per_step = cfg.batch_size * cfg.grad_accum
    steps = math.ceil(n_samples * cfg.epochs / per_step) if n_samples else 0
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


class LoRATrainer:
    """Trains one task's adapter at a time on a peft model, resetting to the initial adapter between tasks."""

    parallel: Any = None  # distributed.DataParallel when fine-tuning under torchrun; None: one process
    pack_tokens: int = 0  # >0: a step's samples go into packed rows of at most this many tokens

    def __init__(self, model: Any, *, pad_id: int, backend: str, scaler: Any = None) -> None:
        # peft inside the methods: engine.py imports this module before a loader runs, and unsloth
        # wants to be imported before peft (unsloth_loader._import_unsloth)
        from peft import get_peft_model_state_dict

        self.model, self.pad_id, self.backend = model, pad_id, backend
        self.scaler = scaler  # torch GradScaler for fp16 (T4); None otherwise
        self.device = next(p.device for p in model.parameters())
        self.compute_s = 0.0  # seconds inside optimizer steps (forward, backward, update)
        self._init = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}

    def reset(self) -> None:
        """Restore the adapter to its state right after creation (same Parameter objects)."""
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model, self._init)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise RuntimeError(f"adapter reset left unexpected keys: {unexpected[:3]}")

    def train(self, samples: list[TrainSample], rng: np.random.Generator, cfg: TrainConfig, *,
              deadline: float | None = None, progress: Any = None,
              resume: dict[str, Any] | None = None,
              checkpoint: Callable[[int, dict[str, Any]], None] | None = None,
              checkpoint_every: int = 0,
              on_step: Callable[[int], None] | None = None) -> TrainResult:
        """Train on `samples` for the planned steps, stopping early at `deadline` (time.monotonic;
        the first step always runs). The LoRA shape (r, targets) is fixed by the model; `cfg` sets
        the optimisation. With `checkpoint`, every `checkpoint_every` steps it is called with (steps
        done, optimizer and scheduler state); `resume` is such a state (plus "step") to continue
        from. `on_step(steps done)` runs after every optimizer step (heartbeats). The sample order
        comes from `rng` alone, so a resumed run sees the same order as an uninterrupted one.
        Whatever happens inside (an OOM, an interrupt), no gradient or cached memory is left."""
        try:
            return self._train(samples, rng, cfg, deadline, progress, resume, checkpoint,
                               checkpoint_every, on_step)
        finally:
            self.clear()

    def clear(self) -> None:
        """Drop gradients and the CUDA cache, back to inference mode: nothing of a training run
        (finished or failed) may reach the next task."""
        for p in self.model.parameters():
            p.grad = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.set_mode(training=False)

    def _train(self, samples, rng, cfg, deadline, progress, resume, checkpoint, checkpoint_every,
               on_step) -> TrainResult:
        start = time.monotonic()
        steps_total = planned_steps(len(samples), cfg)
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        warm = max(1, round(cfg.warmup_fraction * steps_total))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / warm, max(0.0, (steps_total - s) / max(1, steps_total - warm))))
        per_step = cfg.batch_size * cfg.grad_accum
        order = _epoch_order(len(samples), steps_total * per_step, rng)
        begin = 0
        if resume is not None:
            if self.parallel is not None:
                self.parallel.load_optimizer_state(opt, resume["optimizer"])
            else:
                opt.load_state_dict(resume["optimizer"])
            sched.load_state_dict(resume["scheduler"])
            begin = int(resume["step"])
        self.set_mode(training=True)
        first = last = None
        step, stopped, tokens = begin, False, 0
        losses: list[float] = []
        for step in range(begin, steps_total):
            if step > begin and deadline is not None and time.monotonic() > deadline:
                stopped = True
                break
            idx = order[step * per_step:(step + 1) * per_step]
            if self.parallel is not None:
                idx = self.parallel.shard(idx)
            chunk = [s for s in (samples[i] for i in idx) if s is not None]  # None: cannot fit
            tokens += sum(len(c.ids) for c in chunk)
            t0 = time.perf_counter()
            loss = self._step(chunk, params, opt, cfg)
            self.compute_s += time.perf_counter() - t0
            sched.step()
            if math.isfinite(loss):
                last = loss
                losses.append(round(last, 5))
                first = last if first is None else first
            elif self.scaler is None or step + 1 == steps_total and first is None:
                # The adapter is ruined (and no JSON holds the loss). With fp16 the scaler skips
                # such an update (torch/amp/grad_scaler.py:371, found_inf), so only a run
                # without any finite loss fails.
                raise NonFiniteLoss(f"training loss is {loss} at step {step + 1} of {steps_total}: "
                                    "the model's weights or the learning rate give non-finite values")
            if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
                state = (opt.state_dict() if self.parallel is None
                         else self.parallel.optimizer_state(opt))
                checkpoint(step + 1, {"optimizer": state, "scheduler": sched.state_dict()})
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.3f}", refresh=False)
            if on_step is not None:
                on_step(step + 1 - begin)
        else:
            step = steps_total
        return TrainResult(step, steps_total, len(samples), last, first,
                           time.monotonic() - start, stopped, tokens, losses)

    def set_mode(self, *, training: bool) -> None:
        """train()/eval(), plus unsloth's own switches when the model came from unsloth."""
        if self.backend == "unsloth":
            from submission.model.backends.unsloth_loader import set_mode

            set_mode(self.model, training)
        else:
            self.model.train(training)

    def _step(self, chunk: list[TrainSample], params: list, opt: Any, cfg: TrainConfig) -> float:
        if self.pack_tokens:
            from submission.finetune.data import pack_rows

            rows = pack_rows([len(c.ids) for c in chunk], self.pack_tokens)
            batches = [self._collate_packed([chunk[i] for i in r]) for r in rows]
        else:
            micro = [chunk[i:i + cfg.batch_size] for i in range(0, len(chunk), cfg.batch_size)]
            batches = [self._collate(m) for m in micro]
        n_items = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
        par = self.parallel
        if par is not None:  # the whole step's targets; every rank runs as many passes as the busiest
            n_items, n_micro = par.step_counts(n_items, len(batches))
            batches += [self._empty_batch() for _ in range(n_micro - len(batches))]
        n_items_t = torch.tensor(max(n_items, 1) if par is None else max(n_items, 1) / par.item_scale,
                                 device=self.device)
        model = self.model if par is None else par.module
        total = 0.0
        for i, b in enumerate(batches):
            with contextlib.nullcontext() if par is None else par.accumulate(i == len(batches) - 1):
                out = model(**b, num_items_in_batch=n_items_t)
                loss = out.loss
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            total += float(loss.detach())
        if par is not None:
            total = par.mean_loss(total)
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        return total

    def _collate(self, samples: list[TrainSample]) -> dict[str, Any]:
        width = max(len(s.ids) for s in samples)
        ids = torch.full((len(samples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
        attn = torch.zeros((len(samples), width), dtype=torch.long)
        for row, s in enumerate(samples):
            t = torch.tensor(s.ids, dtype=torch.long)
            ids[row, :len(t)] = t
            attn[row, :len(t)] = 1
            labels[row, :len(t)] = torch.where(torch.tensor(s.mask), t, IGNORE)
        return {"input_ids": ids.to(self.device), "attention_mask": attn.to(self.device),
                "labels": labels.to(self.device)}

    def _collate_packed(self, samples: list[TrainSample]) -> dict[str, Any]:
        """One row holding `samples` end to end. Position ids restart at every sample and there is
        no 2D attention mask, so transformers builds a block-diagonal causal mask (sdpa, eager; flash
        attention reads the same position ids); a sample's first token is never a target."""
        ids = torch.tensor([t for s in samples for t in s.ids], dtype=torch.long)
        pos = torch.tensor([p for s in samples for p in range(len(s.ids))], dtype=torch.long)
        keep = torch.tensor([m for s in samples for m in s.mask], dtype=torch.bool) & (pos > 0)
        labels = torch.where(keep, ids, IGNORE)
        return {"input_ids": ids[None].to(self.device), "position_ids": pos[None].to(self.device),
                "labels": labels[None].to(self.device), "use_cache": False}

    def _empty_batch(self) -> dict[str, Any]:
        """One pad token and no target: a rank with less work in a step still joins every pass."""
        one = torch.ones((1, 1), dtype=torch.long, device=self.device)
        return {"input_ids": one * self.pad_id, "attention_mask": one, "labels": one * IGNORE}

    def save(self, out_dir: str | Path, dtype: Any = None) -> Path:
        """Write the current adapter as a PEFT directory, atomically (temp dir, then rename), its
        floating tensors cast to `dtype` (the served model's: unsloth keeps LoRA weights in fp32,
        twice the bytes vLLM needs). A failed write (a full disk) leaves no partial directory."""
        def fill(tmp: Path) -> None:
            self.model.save_pretrained(str(tmp))
            if dtype is not None:
                _cast_safetensors(tmp / "adapter_model.safetensors", dtype)

        return replace_dir_atomic(out_dir, fill)

    def load_adapter_weights(self, adapter_dir: str | Path) -> None:
        """Put a saved adapter's weights into the live model (forward-pass re-scoring)."""
        from peft import set_peft_model_state_dict

        state = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
        set_peft_model_state_dict(self.model, state)


def _cast_safetensors(path: Path, dtype: Any) -> None:
    """Rewrite a safetensors file with its floating tensors in `dtype` (others unchanged)."""
    state = load_file(str(path))
    if all(t.dtype == dtype or not t.is_floating_point() for t in state.values()):
        return
    save_file({k: t.to(dtype) if t.is_floating_point() else t for k, t in state.items()},
              str(path), metadata={"format": "pt"})


def _epoch_order(n: int, need: int, rng: np.random.Generator) -> np.ndarray:
    """Sample indices for `need` slots: whole shuffled epochs (a new permutation drawn from `rng`
    for each), the last one cut. An array: millions of slots stay a few MB."""
    if not n or need <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([rng.permutation(n) for _ in range(-(-need // n))])[:need]

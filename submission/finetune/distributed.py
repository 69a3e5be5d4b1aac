"""Data-parallel fine-tuning across processes: the process group, and the hooks the shared training
loop calls when it runs on several ranks (`LoRATrainer.parallel`).

Launchers: `torchrun` and `accelerate launch` both set RANK, WORLD_SIZE and LOCAL_RANK; without
them (or with WORLD_SIZE=1) nothing here starts and training runs in one process exactly as before.
Backend: NCCL on GPUs, gloo on CPU. Gradients: DDP (LoRA and fully trained `modules_to_save`), or
FSDP2 `fully_shard` per decoder layer when the model does not fit one device. Each rank takes one
contiguous slice of every optimizer step's samples; the loss is normalised by the target count of
the whole step over all ranks, so the update equals one process's with the same global batch.
This module shards, synchronises and gathers; it reads no data and writes no file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from submission.errors import ConfigError

DEFAULT_TIMEOUT_S = 1800.0  # a collective that waits this long (a hung rank) raises instead of hanging


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """Rank, world size and local rank from the launcher's environment (one process without)."""
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        raw = os.environ.get(name, "")
        try:
            values[name] = int(raw) if raw.strip() else default
        except ValueError:
            raise ConfigError(f"environment variable {name}={raw!r}: not an integer") from None
    env = DistEnv(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
    if env.world < 1 or not 0 <= env.rank < env.world:
        raise ConfigError(f"RANK={env.rank} WORLD_SIZE={env.world}: rank must be in 0..world-1")
    return env


def init_distributed(timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[DistEnv, bool]:
    """Join the process group the launcher describes: (env, whether this call started it; leave
    it with `shutdown` then). One process: nothing happens. On GPUs each rank takes device
    LOCAL_RANK before any model is loaded, so `.to("cuda")` lands on its own card."""
    env = dist_env()
    if env.world == 1:
        return env, False
    if dist.is_initialized():
        return env, False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return env, True


def shutdown() -> None:
    """Leave the process group, if this process is in one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_grad_accum(grad_accum: int, world: int, section: str = "finetune") -> int:
    """Micro-batches per rank and step so that batch_size x grad_accum samples make one step at any
    world size (grad_accum is the single-process value)."""
    if grad_accum % world:
        raise ConfigError(f"config {section}.grad_accum={grad_accum} is not divisible by the world "
                          f"size {world}: the global batch (batch_size x grad_accum) must split "
                          "evenly over the ranks")
    return grad_accum // world


def broadcast(obj: Any, env: DistEnv) -> Any:
    """Rank 0's `obj` on every rank (pickled; for small state such as a resume point)."""
    if env.world == 1:
        return obj
    box = [obj if env.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.world > 1:
        dist.barrier()


def all_sum(values: Sequence[float], env: DistEnv) -> list[float]:
    """Element-wise sum over ranks (float64, on the backend's device)."""
    if env.world == 1:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


def _comm_device() -> Any:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")


def decoder_layers(model: Any) -> list[Any]:
    """The transformer blocks to shard one by one (transformers names them in `_no_split_modules`)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    return layers or [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


class DataParallel:
    """What the training loop needs from the ranks: its share of a step, the step's target count,
    gradient synchronisation, the mean loss, and full (unsharded) state for checkpoints."""

    def __init__(self, model: Any, env: DistEnv, *, fsdp: bool = False) -> None:
        self.env, self.fsdp, self.model = env, fsdp, model
        self.rank, self.world = env.rank, env.world
        if fsdp:
            from torch.distributed.fsdp import fully_shard

            for layer in decoder_layers(model):
                fully_shard(layer)
            fully_shard(model)
            self.module = model  # sharded in place: its parameters are now DTensors
        else:
            ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
            # DDP's constructor copies rank 0's parameters to every rank (a resumed adapter included)
            self.module = DistributedDataParallel(model, device_ids=ids)

    def shard(self, indices: Sequence[int]) -> Sequence[int]:
        """This rank's contiguous slice of one step's samples (the step size is a multiple of world)."""
        n = len(indices) // self.world
        return indices[self.rank * n:(self.rank + 1) * n]

    def step_counts(self, n_items: int, n_micro: int) -> tuple[int, int]:
        """(target tokens of the whole step, micro-batches of the busiest rank)."""
        items = torch.tensor([n_items], dtype=torch.int64, device=_comm_device())
        micro = torch.tensor([n_micro], dtype=torch.int64, device=_comm_device())
        dist.all_reduce(items)
        dist.all_reduce(micro, op=dist.ReduceOp.MAX)
        return int(items[0]), int(micro[0])

    def mean_loss(self, local: float) -> float:
        """Step loss over all ranks. Each rank's loss is scaled by `world` (see `item_scale`)."""
        return all_sum([local], self.env)[0] / self.world

    @property
    def item_scale(self) -> int:
        """DDP and FSDP average gradients over ranks; dividing the target count by this restores
        the sum, so the gradient is that of one batch holding every rank's samples."""
        return self.world

    @contextlib.contextmanager
    def accumulate(self, last: bool) -> Iterator[None]:
        """Gradient sync only on the last micro-batch of a step (every rank runs the same count)."""
        if self.fsdp:
            self.module.set_requires_gradient_sync(last)
            yield
        elif last:
            yield
        else:
            with self.module.no_sync():
                yield

    def optimizer_state(self, opt: Any) -> dict[str, Any]:
        """Optimizer state to checkpoint, in `opt.state_dict()`'s positional form whatever the
        wrapper, so a checkpoint resumes at any world size, with or without FSDP. DDP: replicated,
        so this rank's own. FSDP: gathered to full tensors (a collective every rank must enter)."""
        if not self.fsdp:
            return opt.state_dict()
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_optimizer_state_dict)

        full = get_optimizer_state_dict(self.model, opt, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        if not full:  # ranks other than 0 get nothing back (only rank 0 writes checkpoints)
            return {}
        return _renamed(full, {n: i for i, n in enumerate(_trainable_names(self.model))})

    def load_optimizer_state(self, opt: Any, state: dict[str, Any]) -> None:
        if not self.fsdp:
            opt.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             set_optimizer_state_dict)

        full = _renamed(state, dict(enumerate(_trainable_names(self.model))))
        set_optimizer_state_dict(self.model, opt, full,
                                 options=StateDictOptions(full_state_dict=True))

    def adapter_state(self) -> dict[str, Any] | None:
        """Full trainable tensors (LoRA, modules_to_save) under their state-dict names, gathered
        from the shards (FSDP; a collective). None under DDP: the live model already holds them."""
        if not self.fsdp:
            return None
        from torch.distributed.tensor import DTensor

        out = {}
        for k, v in self.model.state_dict().items():
            if "lora_" in k or ".modules_to_save." in k:
                out[k] = (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu()
        return out


def _trainable_names(model: Any) -> list[str]:
    """Names of the trainable parameters in the order the optimizer holds them."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _renamed(state: dict[str, Any], key: dict[Any, Any]) -> dict[str, Any]:
    """An optimizer state dict with its parameter keys mapped (position <-> name)."""
    return {"state": {key[k]: v for k, v in state["state"].items()},
            "param_groups": [dict(g, params=[key[k] for k in g["params"]])
                             for g in state["param_groups"]]}

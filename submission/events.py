"""Every fallback a run counts, named once: what it means and whether it fails a Kaggle smoke run.

A fallback is the run going on another way (a stage failed, a task was cut to fit, time ran out);
`run.json["fallbacks"]` and each task record's `fallbacks` count them by name. The stages import
their names from here and count them into a `Counts`, which refuses a name that is not registered,
so a misspelt or new unregistered name fails at once instead of going uncounted by the smoke verdict
(`tools/kaggle.py`). `tests/test_events.py` checks that every registered name is produced by some
module and every produced name is registered. Faults (exceptions a stage recorded) are a list of
their own in run.json, not counted here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from submission.errors import SubmissionError


@dataclass(frozen=True)
class Fallback:
    name: str
    meaning: str
    fails_smoke: bool  # True: a stage did not work, so a smoke run with it fails


class UnknownFallback(SubmissionError, KeyError):
    """A counter name that is not in the registry (a programming error, not bad input)."""


_ALL: list[Fallback] = []


def _register(name: str, meaning: str, *, fails_smoke: bool) -> str:
    _ALL.append(Fallback(name, meaning, fails_smoke))
    return name


# --- stages that did not work: a smoke run with any of them fails
BAD_TASK = _register("bad_task", "a task failed to load and got placeholder answers", fails_smoke=True)
TTT_FAILED = _register(
    "ttt_failed", "test-time training failed; the task fell back to base-model answers or placeholders",
    fails_smoke=True)
TASKS_GIVEN_UP = _register(
    "tasks_given_up", "a worker died or overran and its tasks were given up (placeholders)", fails_smoke=True)
DEADLINE_SKIPPED = _register(
    "deadline_skipped_tasks", "tasks never ran before the deadline (placeholders)", fails_smoke=True)
GPU_UNUSABLE = _register(
    "gpu_unusable", "nvidia-smi sees a GPU that torch cannot use: nothing trained on the CPU; the "
    "program-search lane answered what it could, the other tasks kept placeholders", fails_smoke=True)
VLLM_START_FAILED = _register(
    "vllm_start_failed", "vLLM did not start; sampling fell back to transformers", fails_smoke=True)
VLLM_LOST = _register(
    "vllm_rebuild_failed_use_transformers",
    "vLLM failed and could not be rebuilt; this engine sampled with transformers from then on", fails_smoke=True)
REQUESTS_REJECTED = _register(
    "sample_requests_rejected", "the sampler rejected a task's requests; the task got no answers from them",
    fails_smoke=True)
RESCORE_FAILED = _register(
    "rescore_failed", "re-scoring failed; the test input was ranked by counts alone", fails_smoke=True)
RESCORE_VLLM_FAILED = _register(
    "rescore_vllm_failed_use_forward", "vLLM re-scoring failed; the forward pass re-scored instead",
    fails_smoke=True)
PREFIX_BATCH_OFF = _register(
    "rescore_prefix_batch_off", "no prefix-KV path works (tree is switched off before batch); re-scoring "
    "runs one full forward pass per answer", fails_smoke=True)
RECORD_WRITE_FAILED = _register(
    "record_write_failed", "a task record could not be written (no resume point)", fails_smoke=True)

# --- designed behaviour, model quality or a working fallback: counted, never a smoke failure
TTT_ADAPTER_REUSED = _register(
    "ttt_adapter_reused", "a resumed task reused the adapter an earlier run saved", fails_smoke=False)
TTT_SAMPLES_TOO_LONG = _register(
    "ttt_samples_too_long", "training samples too long for the context even with one demo were left out",
    fails_smoke=False)
TTT_CUT_BY_DEADLINE = _register(
    "ttt_cut_by_deadline", "training stopped at the task's training allowance", fails_smoke=False)
VIEW_DEMOS_DROPPED = _register(
    "view_demos_dropped", "demos dropped from the front of a view's prompt so that it fits", fails_smoke=False)
VIEW_TOO_LONG = _register(
    "views_too_long_dropped", "a test input too large for the context even with one demo", fails_smoke=False)
BASE_MODEL_SAMPLED = _register(
    "base_model_sampled_inputs", "test inputs sampled with the base model (no adapter answer)", fails_smoke=False)
UNSURE_RESAMPLED = _register(
    "unsure_inputs_resampled", "spare time spent sampling an unsure test input again", fails_smoke=False)
DFS_DRAFT_UNPROVEN = _register(
    "dfs_draft_unproven", "a speculative draft's verification could not be proven computed; it was decoded",
    fails_smoke=False)
SPECULATIVE_OFF = _register(
    "speculative_search_off", "speculative search stopped for the rest of this engine's run: too few of "
    "its answer paths were verified whole to repay the waves (plain DFS from here on)", fails_smoke=False)
RESCORE_OUT_OF_TIME = _register(
    "rescore_out_of_time_vote", "re-scoring would have run past the task's due time: ranked by votes",
    fails_smoke=False)
RESCORE_VLLM_DISAGREES = _register(
    "rescore_vllm_disagrees_use_forward", "vLLM and the forward pass ordered candidates differently: the "
    "forward pass is kept (the check did its job)", fails_smoke=False)
PREFIX_TREE_OFF = _register(
    "rescore_prefix_tree_off", "the tree prefix-KV path does not work for this model (e.g. no 4D masks): "
    "batch mode still reuses the KV", fails_smoke=False)
PREFIX_TREE_HALVED = _register(
    "rescore_prefix_tree_chunk_halved", "out of memory in tree re-scoring: the chunks adapt", fails_smoke=False)
PREFIX_BATCH_HALVED = _register(
    "rescore_prefix_batch_chunk_halved", "out of memory in batch re-scoring: the chunks adapt", fails_smoke=False)
ATTEMPT_FROM_BASE = _register(
    "attempt_from_base_model", "an attempt came from the base model's answers", fails_smoke=False)
ATTEMPT_PLACEHOLDER = _register(
    "attempt_placeholder", "fewer than two distinct answers: a placeholder attempt", fails_smoke=False)
LANE_ONLY_TASKS = _register(
    "tasks_answered_by_lane_only", "the neural path gave nothing; the program-search lane's answers are "
    "the attempts", fails_smoke=False)
LANE_ONLY_ATTEMPTS = _register(
    "attempts_from_lane_only", "test inputs whose attempts are the lane's alone", fails_smoke=False)

REGISTRY: dict[str, Fallback] = {f.name: f for f in _ALL}
SMOKE_FAILURES: dict[str, str] = {f.name: f.meaning for f in _ALL if f.fails_smoke}


def check(name: str) -> str:
    if name not in REGISTRY:
        raise UnknownFallback(f"fallback {name!r} is not registered in submission/events.py")
    return name


class Counts(Counter):
    """Fallback counters keyed by registered names only: `+=` goes through `__setitem__`; `update`
    (which the constructor calls, and which fills an empty Counter with dict.update) checks every
    key before it counts any."""

    def __setitem__(self, key: str, value: int) -> None:
        super().__setitem__(check(key), value)

    def update(self, iterable=None, /, **kwds) -> None:
        items = dict(iterable) if hasattr(iterable, "keys") else Counter(iterable or ())
        items.update(kwds)
        for key in items:
            check(key)
        super().update(items)

"""Named exceptions of the package. Every error a user can cause maps to exit code 2."""

from __future__ import annotations

import os

STRICT_ENV = "ARC_STRICT_FALLBACKS"  # "1" (the test suite sets it): see `reraise_unless_ours`


class SubmissionError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(SubmissionError):
    """Bad input data: names the file, the task and the field that is wrong."""

    def __init__(self, message: str, *, file: str | None = None, task: str | None = None,
                 field: str | None = None) -> None:
        self.file, self.task, self.field, self.detail = file, task, field, message
        where = ", ".join(p for p in (
            f"file {file}" if file else "",
            f"task {task}" if task else "",
            f"field {field}" if field else "") if p)
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(SubmissionError):
    """Unknown config key, wrong value type, or an impossible combination of settings."""


class FormatError(SubmissionError):
    """A text format cannot be used with a tokenizer (a cell is not exactly one token)."""


class BackendUnavailable(SubmissionError):
    """A requested backend (unsloth, vLLM, a GPU) is not installed or cannot run here."""


class BudgetExceeded(SubmissionError):
    """A stage ran past its deadline; the caller falls back to what it has."""


class AdapterError(SubmissionError):
    """A saved LoRA adapter is missing or unreadable; the task falls back to base-model answers."""


class SamplerError(SubmissionError):
    """A sampling backend rejected or failed a request (vLLM's own errors, translated)."""


class NonFiniteLoss(SubmissionError):
    """A training step's loss is NaN or infinite (broken weights, or a diverging learning rate)."""


class Interrupted(SubmissionError):
    """The user stopped a run (Ctrl-C) after what finished was written; exit code 130."""


def printable(text: str) -> str:
    """`text` on one line: control characters (newlines, escape codes) and lone surrogates are
    written as Python escapes, so an error about a hostile task id stays one readable line."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


class SamplerLost(SamplerError):
    """The sampler's engine failed and could not be rebuilt: the engine switches samplers."""


def reraise_unless_ours(exc: BaseException) -> None:
    """Called where a fast path falls back on a caught exception: under the strict switch
    (ARC_STRICT_FALLBACKS=1) an exception that is not one of this package's re-raises, so a bug
    fails a test instead of silently taking the slow path. Without it, nothing happens."""
    if os.environ.get(STRICT_ENV) == "1" and not isinstance(exc, SubmissionError):
        raise exc

"""Load a model directory's tokenizer exactly as its files describe it (offline, local files only).

transformers 5 rebuilds a tokenizer from its class name (`tokenizer_config.json`'s
`tokenizer_class`), taking only the vocabulary and merges from `tokenizer.json` and dropping its model
options. Reduced-vocabulary checkpoints suffer: NVARC's Qwen3 tokenizer is a BPE of 16 pieces with no
merges that relies on `ignore_merges`, and rebuilt as a `Qwen2Tokenizer` it encodes `"user"` to no
token at all. So when a `tokenizer.json` is present it is loaded as is with the `tokenizers` library
and wrapped in `PreTrainedTokenizerFast`, with the special tokens (bos, eos, pad, unk) and the
`add_bos_token`/`add_eos_token` switches taken from `tokenizer_config.json` (or the older
`special_tokens_map.json`). A BPE that has no merges but multi-character pieces can only ever reach
those pieces with `ignore_merges`, so that switch is turned on (and reported in `notes`). Directories
without a `tokenizer.json` (sentencepiece or vocab/merges files only) go through `AutoTokenizer`.

This module does not check that a text format fits the tokenizer (formats.py does) and never downloads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from submission.errors import InputError

SPECIAL_FIELDS = ("bos_token", "eos_token", "pad_token", "unk_token")
# Files a model directory may describe its tokenizer with (copied verbatim by copy_tokenizer_files).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "spiece.model", "tekken.json", "chat_template.jinja", "chat_template.json",
                   "chat_template.j2")
_OTHER_SOURCES = ("tokenizer.model", "vocab.json", "tekken.json", "spiece.model")


def binding_error(err: BaseException) -> bool:
    """Whether `err` is an error of the `tokenizers` binding itself: it converts every Rust error
    into a plain `Exception` (bindings/python/src/error.rs, `ToPyResult`: `PyException::new_err`),
    e.g. a WordLevel model whose unk token is not in its vocabulary encoding an unknown piece
    (tokenizers/src/models/wordlevel/mod.rs, `Model::tokenize`: `Error::MissingUnkToken`,
    "WordLevel error: Missing [UNK] token from the vocabulary"); transformers 5.17.0 passes it on
    uncaught (tokenization_utils_tokenizers.py:1074, `self._tokenizer.encode_batch`). Subclasses
    (TypeError, ...) are never binding errors."""
    return type(err) is Exception


def load_tokenizer(model_dir: str | Path, *, notes: list[str] | None = None) -> Any:
    """The tokenizer of a local model directory (InputError naming the directory or file when
    there is none or its files are unreadable). Repairs made while loading are appended to `notes`."""
    path = Path(model_dir)
    if not path.is_dir():
        raise InputError("model directory not found (tokenizers are loaded from local paths only)",
                         file=str(path))
    if (path / "tokenizer.json").is_file():
        return _from_tokenizer_json(path, notes if notes is not None else [])
    if any((path / name).is_file() for name in _OTHER_SOURCES):
        from transformers import AutoTokenizer

        from submission.runtime.modelfiles import reading_model

        with reading_model(path, "the tokenizer"):
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    raise InputError("no tokenizer files (tokenizer.json, or tokenizer.model / vocab.json + "
                     "merges.txt) in the model directory", file=str(path))


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read tokenizer file: {err}", file=str(file)) from err
    if not isinstance(data, dict):
        raise InputError("not a JSON object", file=str(file))
    return data


def _token_text(value: Any) -> str | None:
    """A special token as written in the config: a string, an AddedToken dict, or null."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def tokenizer_settings(model_dir: str | Path) -> dict[str, Any]:
    """Special tokens and bos/eos switches of a model directory's tokenizer config files
    (`tokenizer_config.json` wins over `special_tokens_map.json`); only keys the files set."""
    path = Path(model_dir)
    settings: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if not (path / name).is_file():
            continue
        data = _read_json(path / name)
        for key in SPECIAL_FIELDS:
            if key in data:
                settings[key] = _token_text(data[key])
        for key in ("add_bos_token", "add_eos_token"):
            if isinstance(data.get(key), bool):
                settings[key] = data[key]
        if isinstance(data.get("model_max_length"), int):
            settings["model_max_length"] = data["model_max_length"]
    return settings


def _from_tokenizer_json(path: Path, notes: list[str]) -> Any:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    file = path / "tokenizer.json"
    data = _read_json(file)
    model = data.get("model")
    if not isinstance(model, dict):
        raise InputError("no tokenizer model", file=str(file), field="model")
    added = {t.get("content") for t in data.get("added_tokens") or [] if isinstance(t, dict)}
    if (model.get("type") == "BPE" and not model.get("merges") and not model.get("ignore_merges")
            and isinstance(model.get("vocab"), dict)
            and any(len(piece) > 1 and piece not in added for piece in model["vocab"])):
        model["ignore_merges"] = True
        notes.append(f"{file}: BPE without merges: turned on ignore_merges so that its "
                     "multi-character pieces encode as one token each")
        repaired = True
    else:
        repaired = False
    try:
        backend = Tokenizer.from_str(json.dumps(data)) if repaired else Tokenizer.from_file(str(file))
    except Exception as err:
        if not binding_error(err):  # a malformed model: the binding's plain Exception
            raise
        raise InputError(f"not a valid tokenizers file: {err}", file=str(file)) from err
    size = backend.get_vocab_size(with_added_tokens=True)
    settings = tokenizer_settings(path)
    kwargs: dict[str, Any] = {k: settings.get(k) for k in SPECIAL_FIELDS}
    for key in ("add_bos_token", "add_eos_token", "model_max_length"):
        if key in settings:
            kwargs[key] = settings[key]
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False,
                                  **kwargs)
    for key in SPECIAL_FIELDS:
        token = kwargs[key]
        if token is None:
            continue
        tid = backend.token_to_id(token)
        if tid is None or tid >= size:
            config = "tokenizer_config.json" if (path / "tokenizer_config.json").is_file() \
                else "special_tokens_map.json"
            raise InputError(f"{token!r} is not a token of {file.name}", file=str(path / config),
                             field=key)
    if len(tok) != size:  # wrapping must never grow the vocabulary past the model's rows
        raise InputError(f"loading added {len(tok) - size} token(s) to the vocabulary",
                         file=str(file))
    return tok


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the tokenizer files of model directory `src` into `dst` unchanged, so that a merged or
    converted model keeps exactly its base's tokenizer; returns the names copied (InputError if none)."""
    src, dst = Path(src), Path(dst)
    copied = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    if not copied:
        raise InputError("no tokenizer files to copy", file=str(src))
    dst.mkdir(parents=True, exist_ok=True)
    for name in copied:
        shutil.copy(src / name, dst / name)
    return copied

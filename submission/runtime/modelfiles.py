"""Checks and fingerprints of a local model directory, without loading it (no torch needed).

`check_model_weights` reads every `*.safetensors` header and makes sure the file holds exactly the
tensor data the header promises, so a truncated or corrupt file is a clean InputError naming it
instead of a loader's traceback (possibly inside a worker process). `model_identity` says which
model answers came from, so a rerun with another model does not reuse them: it hashes every byte
of every weight file once, and keeps the digests in a cache file keyed by each file's path, size,
inode, mtime and ctime, so a large model is read in full once per workdir. Neither loads weights.
`check_model_config` refuses a config.json the loaders would crash on, and `reading_model` turns
what the model libraries raise while reading a directory into an InputError naming it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from submission.errors import InputError, SubmissionError

MAX_HEADER_BYTES = 100_000_000  # the safetensors library refuses larger headers too
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
CONTENT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json") + INDEX_FILES  # fingerprinted by content
HASH_CHUNK = 1 << 24  # bytes read per step while hashing a weight file
# bytes per element of the byte-sized safetensors dtypes (sub-byte dtypes are not size-checked)
# Packages that parse a model directory's files and build the model from them: their errors,
# raised while a directory is read, mean the directory is bad (torch: e.g. an embedding whose
# padding row does not exist). Not torch.cuda: a GPU that fails is no fault of the files.
MODEL_LIBRARIES = frozenset({"transformers", "tokenizers", "safetensors", "torch", "peft",
                             "huggingface_hub"})
MESSAGE_CHARS = 300  # of a library's message in such an InputError
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
               "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
               "I64": 8, "U64": 8, "F64": 8, "C64": 8}


def weight_files(model_dir: str | Path) -> list[Path]:
    """The weight files directly in `model_dir`, sorted by name."""
    d = Path(model_dir)
    return sorted({p for pattern in WEIGHT_PATTERNS for p in d.glob(pattern) if p.is_file()})


def model_identity(model_dir: str | Path, cache: str | Path | None = None) -> dict[str, str]:
    """{"path": resolved directory, "fingerprint": sha256 hex} of a model directory.

    The fingerprint covers the content of config.json, the tokenizer and index files, and every
    weight file's name, size and sha256 of all its bytes. Two directories with equal fingerprints
    hold the same model for every purpose this package has; the path is kept as well, so that a
    record says where its answers came from. `cache` (a JSON file, e.g. in the workdir) keeps the
    weight files' digests between runs (`weight_digest`)."""
    d = Path(model_dir).resolve()
    if not d.is_dir():
        raise InputError("not a model directory", file=str(model_dir))
    known = _read_cache(cache)
    h = hashlib.sha256()
    for name in CONTENT_FILES:
        p = d / name
        if p.is_file():
            content = _read(p, None)
            h.update(f"{name}\0{len(content)}\0".encode() + content)
    entries = {}
    for p in weight_files(d):
        entries[str(p)] = entry = weight_digest(p, known.get(str(p)))
        h.update(f"{p.name}\0{entry['size']}\0{entry['sha256']}\0".encode())
    if cache is not None and any(known.get(k) != v for k, v in entries.items()):
        _write_cache(Path(cache), {**known, **entries})
    return {"path": str(d), "fingerprint": h.hexdigest()}


def _stamp(path: Path) -> dict[str, int]:
    """What says a file is unchanged since it was hashed: size, inode, mtime and ctime in ns
    (ctime cannot be set back by a program, so a rewrite that restores the mtime is still seen)."""
    try:
        st = path.stat()
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror or err}", file=str(path)) from err
    return {"size": st.st_size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns}


def weight_digest(path: Path, cached: Any = None) -> dict[str, Any]:
    """{"sha256": digest of every byte, **_stamp(path)}; `cached` (an earlier result) is reused
    when the file's stamp is unchanged, else the file is read in full."""
    stamp = _stamp(path)
    if isinstance(cached, dict) and isinstance(cached.get("sha256"), str) and all(
            cached.get(k) == v for k, v in stamp.items()):
        return {"sha256": cached["sha256"], **stamp}
    h = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(HASH_CHUNK):
                h.update(chunk)
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror or err}", file=str(path)) from err
    after = _stamp(path)
    if after != stamp:  # written while it was read: the digest may mix old and new bytes
        raise InputError("changed while it was being read", file=str(path))
    return {"sha256": h.hexdigest(), **stamp}


def _read_cache(cache: str | Path | None) -> dict[str, Any]:
    """The digest cache's entries by file path; empty when absent or unreadable (then every file
    is hashed again and the cache rewritten)."""
    if cache is None:
        return {}
    try:
        data = json.loads(Path(cache).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache: Path, entries: dict[str, Any]) -> None:
    from submission.runtime.files import write_json_atomic

    write_json_atomic(cache, entries)  # OSError (a full disk) is the caller's, as for any output


def _read(path: Path, n: int | None, offset: int = 0) -> bytes:
    """Up to n bytes (None: all) from `offset`; InputError naming the file if unreadable."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read(-1 if n is None else n)
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror or err}", file=str(path)) from err


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror or err}", file=str(path)) from err


def check_model_weights(model_dir: str | Path) -> None:
    """InputError naming the file if the directory has no weight files, an index names a missing
    shard, or a `*.safetensors` file is truncated, padded or has a corrupt header."""
    d = Path(model_dir)
    files = weight_files(d)
    if not files:
        raise InputError(f"no weight files ({', '.join(WEIGHT_PATTERNS)}) in the model directory",
                         file=str(d))
    for name in INDEX_FILES:
        if (d / name).is_file():
            _check_index(d / name)
    for p in files:
        if p.suffix == ".safetensors":
            check_safetensors(p)


def _check_index(path: Path) -> None:
    from submission.arc.tasks import read_json_object

    weight_map = read_json_object(path).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InputError("no weight_map object of tensor name -> file name", file=str(path),
                         field="weight_map")
    for shard in sorted(set(weight_map.values())):
        shard_path = path.parent / shard
        if "/" in shard or "\\" in shard or not shard_path.is_file():
            raise InputError(f"names shard {shard!r}, which is not a file beside it",
                             file=str(path), field="weight_map")


def check_safetensors(path: str | Path) -> None:
    """InputError naming `path` unless it is a complete safetensors file: an 8-byte header length,
    a JSON header of tensors whose data_offsets tile the data section exactly, and a file size of
    8 + header + data bytes."""
    path = Path(path)
    file = str(path)

    def fail(message: str) -> None:
        raise InputError(f"corrupt safetensors file: {message}", file=file)

    size = _size(path)
    first = _read(path, 8)
    if len(first) < 8:
        fail(f"{size} bytes, shorter than the 8-byte header length (truncated?)")
    n = struct.unpack("<Q", first)[0]
    if n > MAX_HEADER_BYTES:
        fail(f"header length {n} is over {MAX_HEADER_BYTES} bytes")
    if 8 + n > size:
        fail(f"header of {n} bytes does not fit in the file's {size} bytes (truncated?)")
    try:
        header = json.loads(_read(path, n, offset=8).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        fail(f"header is not JSON: {err}")
    if not isinstance(header, dict):
        fail("header is not a JSON object")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        spans.append(_tensor_span(name, info, fail))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            fail(f"tensor {name!r} starts at data byte {begin}, expected {end} (gap or overlap)")
        end = stop
    if size != 8 + n + end:
        what = "truncated" if size < 8 + n + end else "has trailing bytes"
        fail(f"{size} bytes, the header needs exactly {8 + n + end} ({what})")


def _tensor_span(name: str, info: Any, fail) -> tuple[int, int, str]:
    if not isinstance(info, dict):
        fail(f"tensor {name!r}: entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        fail(f"tensor {name!r}: dtype missing")
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        fail(f"tensor {name!r}: shape is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
        fail(f"tensor {name!r}: data_offsets is not [begin, end] with 0 <= begin <= end")
    if dtype in DTYPE_BYTES:
        count = 1
        for s in shape:
            count *= s
        if count * DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
            fail(f"tensor {name!r}: {dtype} {shape} needs {count * DTYPE_BYTES[dtype]} bytes, "
                 f"data_offsets span {offsets[1] - offsets[0]}")
    return offsets[0], offsets[1], name


def check_model_config(model_dir: str | Path) -> dict[str, Any]:
    """The model directory's config.json as a dict. InputError naming the file (and the field)
    when it is not a JSON object, or when `vocab_size` is not a positive integer or not above
    `pad_token_id` (top level or `text_config`): transformers would build an embedding whose
    padding row does not exist (torch/nn/modules/sparse.py:155, "Padding_idx must be within
    num_embeddings")."""
    file = Path(model_dir) / "config.json"
    try:
        data = json.loads(_read(file, None).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise InputError(f"not valid JSON: {err}", file=str(file)) from err
    if not isinstance(data, dict):
        raise InputError(f"top level is {type(data).__name__}, expected a JSON object",
                         file=str(file))
    for prefix, section in (("", data), ("text_config.", data.get("text_config"))):
        if not isinstance(section, dict) or "vocab_size" not in section:
            continue
        size, pad = section["vocab_size"], section.get("pad_token_id")
        if type(size) is not int or size < 1:
            raise InputError(f"vocab_size must be a positive integer, got {size!r}",
                             file=str(file), field=f"{prefix}vocab_size")
        if type(pad) is int and not 0 <= pad < size:
            raise InputError(f"vocab_size {size} is below the tokenizer's ids: pad_token_id is "
                             f"{pad} (every token id must be below vocab_size)", file=str(file),
                             field=f"{prefix}vocab_size")
    return data


def raised_by_library(exc: BaseException) -> bool:
    """Whether `exc` was raised inside one of MODEL_LIBRARIES (its innermost frame is theirs;
    errors of the Rust bindings surface in the Python frame that called them)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    return module.split(".")[0] in MODEL_LIBRARIES and not module.startswith("torch.cuda")


@contextmanager
def reading_model(file: str | Path, what: str = "the model") -> Iterator[None]:
    """Inside the block, an error a model library raises while reading a model directory becomes
    an InputError naming `file` with the library's message (on one line). Our own errors, errors
    raised outside those libraries (bugs) and running out of memory pass through unchanged."""
    try:
        yield
    except SubmissionError:
        raise
    except Exception as exc:
        if (not raised_by_library(exc) or isinstance(exc, MemoryError)
                or type(exc).__name__ == "OutOfMemoryError"):  # torch's CUDA OOM
            raise
        text = " ".join(str(exc).split())  # one line, however the library wrapped it
        text = text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS - 3] + "..."
        raise InputError(f"cannot load {what}: {type(exc).__name__}: {text}",
                         file=str(file)) from exc


def check_model_dir(model_path: str | Path | None) -> Path:
    """A local model directory with a usable config.json and intact weight files (InputError
    naming the file otherwise; nothing is downloaded, no weight is loaded)."""
    if model_path is None:
        raise InputError("no model directory given (--model)")
    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise InputError(f"{path} is not a model directory (no config.json); models are loaded "
                         "from local paths only", file=str(path))
    check_model_config(path)
    check_model_weights(path)
    return path

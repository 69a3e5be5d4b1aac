"""Text formats: grids <-> token ids, one token per cell, with loss masks, parsing and detection.

A format is bound to a tokenizer: every piece it writes (a digit, the row break, its markers, and
for `architects` the tokenizer's begin token) must be exactly one token of that tokenizer, checked at
construction (FormatError otherwise). Encoding is a table lookup, so prompts never depend on a
tokenizer's merges or post-processor. Parsing never raises: a clean rectangular grid of 1..30
digits per side parses strictly; a few unambiguous deviations that published models emit (leading,
trailing or doubled row breaks, more than 30 rows) parse leniently and are counted; anything else
gives None. `detect_format` picks a format from a tokenizer (`model.format=auto`). This module does
not sample, train or augment.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from submission.errors import FormatError
from submission.arc.grids import MAX_SIDE, Grid, Pair

DIGITS = tuple(str(d) for d in range(10))
NL = "\n"
AUTO = "auto"


class TextFormat(ABC):
    """Interface of a text format bound to a tokenizer (ids come from that tokenizer)."""

    name: str
    markers: tuple[str, ...]  # non-cell pieces the format writes, besides digits and the row break
    specials: tuple[str, ...]  # pieces that are special tokens of the reduced tokenizer
    eos: str  # piece that ends an answer
    uses_bos = False  # every sequence starts with the tokenizer's begin token, where it has one

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.pieces = DIGITS + (NL,) + tuple(m for m in self.markers if m not in DIGITS + (NL,))
        self.id_of = {p: _single_token_id(tokenizer, p, self.name) for p in self.pieces}
        ids = list(self.id_of.values())
        if len(set(ids)) != len(ids):
            raise FormatError(f"format {self.name}: two pieces share one token id: {self.id_of}")
        self.piece_of = {i: p for p, i in self.id_of.items()}
        self.bos: str | None = getattr(tokenizer, "bos_token", None) if self.uses_bos else None
        self.bos_id: int | None = None
        if self.bos:
            self.bos_id = _single_token_id(tokenizer, self.bos, self.name)
            self.piece_of.setdefault(self.bos_id, self.bos)
        self._digit_ids = np.array([self.id_of[d] for d in DIGITS], dtype=np.int64)
        self._nl = self.id_of[NL]
        self.eos_id = self.id_of[self.eos]
        lut = np.full(max(ids) + 1, -1, dtype=np.int64)
        lut[self._digit_ids] = np.arange(10)
        self._cell_of_id = lut
        self.lenient_parses = 0  # answers `parse` accepted only leniently (reported in run.json)
        self.lenient_fixes: Counter = Counter()  # which deviations those answers had

    # --- encoding -------------------------------------------------------------------------
    def grid_ids(self, grid: Grid) -> np.ndarray:
        """Row-major cell ids with a row break between rows (none after the last)."""
        g = self._digit_ids[np.asarray(grid)]
        rows = np.concatenate([g, np.full((g.shape[0], 1), self._nl, dtype=np.int64)], axis=1)
        return rows.ravel()[:-1]

    def ids(self, pieces: Sequence[str]) -> list[int]:
        return [self.id_of[p] for p in pieces]

    @abstractmethod
    def _segments(self, pairs: Sequence[Pair], query: Grid | None) -> list[tuple[np.ndarray, int]]:
        """Token segments in order, each tagged 0 (context), 1 (a demo output), 2 (answer start)."""

    def _sequence(self, pairs: Sequence[Pair], query: Grid | None) -> list[tuple[np.ndarray, int]]:
        """A whole sequence's segments: the begin token (if the format uses one) then `_segments`."""
        head = [(np.array([self.bos_id], dtype=np.int64), 0)] if self.bos_id is not None else []
        return head + self._segments(pairs, query)

    def encode_prompt(self, demos: Sequence[Pair], query: Grid) -> list[int]:
        """Demos then the query input, ending where the answer starts (begin token first)."""
        return np.concatenate([s for s, _ in self._sequence(demos, query)]).tolist()

    def encode_answer(self, grid: Grid) -> list[int]:
        """The answer tokens the model should generate, terminator included."""
        return np.concatenate([s for s, kind in self._segments([Pair(grid, grid)], None)
                               if kind == 1]).tolist()

    def encode_training(self, pairs: Sequence[Pair], *, skip_first: bool = False
                        ) -> tuple[list[int], list[bool]]:
        """All pairs as a training text; the mask is True on every output (optionally not the first)."""
        segs = self._sequence(pairs, None)
        ids = np.concatenate([s for s, _ in segs])
        mask, seen = [], 0
        for seg, kind in segs:
            on = kind == 1 and not (skip_first and seen == 0)
            seen += kind == 1
            mask.append(np.full(len(seg), on))
        return ids.tolist(), np.concatenate(mask).tolist()

    def max_answer_tokens(self, h: int = MAX_SIDE, w: int = MAX_SIDE) -> int:
        return len(self.encode_answer(np.zeros((h, w), dtype=np.uint8)))

    @property
    def stop_token_ids(self) -> list[int]:
        return [self.eos_id]

    # --- decoding -------------------------------------------------------------------------
    def decode(self, ids: Sequence[int]) -> str:
        """Text of known ids (unknown ids become U+FFFD)."""
        return "".join(self.piece_of.get(int(i), "\ufffd") for i in ids)

    def parse(self, ids: Sequence[int]) -> Grid | None:
        """Generated answer ids -> grid (strict, else lenient: counted), or None."""
        grid, fixes = self.parse_lenient(ids)
        if fixes:
            self.lenient_parses += 1
            self.lenient_fixes.update(fixes)
        return grid

    def parse_strict(self, ids: Sequence[int]) -> Grid | None:
        """Only the exact layout the format writes (up to the end token) -> grid, else None."""
        arr = self._answer_array(ids)
        return None if arr is None else self._strict_grid(arr)

    def parse_lenient(self, ids: Sequence[int]) -> tuple[Grid | None, tuple[str, ...]]:
        """(grid or None, deviations accepted). Deviations: "leading_row_break",
        "trailing_row_break", "blank_line" (row breaks in a row), "over_30_rows" (rows past the
        30th are cut, as NVARC's parser does). An empty tuple means a strict parse (or no grid).
        Rows of unequal width, foreign tokens or more than 30 columns stay None: no unique grid."""
        arr = self._answer_array(ids)
        if arr is None:
            return None, ()
        grid = self._strict_grid(arr)
        if grid is not None or arr.size == 0:
            return grid, ()
        if arr.max() >= len(self._cell_of_id) or arr.min() < 0:
            return None, ()
        is_nl = arr == self._nl
        cells = self._cell_of_id[np.where(is_nl, self._digit_ids[0], arr)]
        if (cells < 0).any():
            return None, ()
        rows, start = [], 0
        for end in np.flatnonzero(is_nl).tolist() + [arr.size]:
            rows.append(cells[start:end])
            start = end + 1
        fixes = []
        if rows[0].size == 0:
            fixes.append("leading_row_break")
        if rows[-1].size == 0:
            fixes.append("trailing_row_break")
        filled = [i for i, r in enumerate(rows) if r.size]
        if not filled:
            return None, ()
        if len(filled) != filled[-1] - filled[0] + 1:
            fixes.append("blank_line")
        rows = [rows[i] for i in filled]
        if len(rows) > MAX_SIDE:
            rows, fixes = rows[:MAX_SIDE], fixes + ["over_30_rows"]
        widths = {r.size for r in rows}
        if len(widths) != 1 or widths.pop() > MAX_SIDE or not fixes:
            return None, ()
        return np.stack(rows).astype(np.uint8), tuple(fixes)

    def parse_text(self, text: str) -> Grid | None:
        """Parse an answer given as text (pieces are single characters or markers)."""
        ids, i = [], 0
        by_len = sorted(self.pieces, key=len, reverse=True)
        while i < len(text):
            piece = next((p for p in by_len if text.startswith(p, i)), None)
            if piece is None:
                return None
            ids.append(self.id_of[piece])
            i += len(piece)
        return self.parse(ids)

    def _answer_array(self, ids: Sequence[int]) -> np.ndarray | None:
        """Answer ids up to the first end token, the format's own tail stripped (None: not ints)."""
        try:
            arr = np.asarray(list(ids), dtype=np.int64)
        except (OverflowError, ValueError, TypeError):
            return None
        stop = np.flatnonzero(arr == self.eos_id)
        if stop.size:
            arr = arr[: stop[0]]
        return self._strip_answer_tail(arr)

    def _strict_grid(self, arr: np.ndarray) -> Grid | None:
        if arr.size == 0 or arr.max(initial=0) >= len(self._cell_of_id) or arr.min() < 0:
            return None
        breaks = np.flatnonzero(arr == self._nl)
        w = int(breaks[0]) if breaks.size else arr.size
        h = breaks.size + 1
        if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE) or arr.size != h * w + h - 1:
            return None
        if breaks.size and not np.array_equal(breaks, np.arange(1, h) * (w + 1) - 1):
            return None
        cells = np.delete(arr, breaks) if breaks.size else arr
        values = self._cell_of_id[cells]
        if (values < 0).any():
            return None
        return values.astype(np.uint8).reshape(h, w)

    def _strip_answer_tail(self, arr: np.ndarray) -> np.ndarray:
        return arr


class QwenChatFormat(TextFormat):
    """NVARC's chat layout: `<|im_start|>user\\n{in}<|im_end|><|im_start|>assistant\\n{out}<|im_end|>`
    (no begin token: Qwen tokenizers define none)."""

    name = "qwen-chat"
    markers = ("user", "assistant", "<|endoftext|>", "<|im_start|>", "<|im_end|>")
    specials = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    eos = "<|im_end|>"

    def _segments(self, pairs, query):
        user = np.array(self.ids(["<|im_start|>", "user", NL]))
        asst = np.array(self.ids(["<|im_end|>", "<|im_start|>", "assistant", NL]))
        end = np.array([self.eos_id])
        segs: list[tuple[np.ndarray, int]] = []
        for p in pairs:
            segs += [(user, 0), (self.grid_ids(p.input), 0), (asst, 0),
                     (np.concatenate([self.grid_ids(p.output), end]), 1)]
        if query is not None:
            segs += [(user, 0), (self.grid_ids(query), 0), (asst, 2)]
        return segs


class ArchitectsFormat(TextFormat):
    """ARChitects 2024 layout: the tokenizer's begin token once (where it defines one: their
    tokenizer adds `<s>`), the preprompt, then `I{in}\\n+/-=O{out}\\n<eos>` per pair."""

    name = "architects"
    preprompt = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjklmnpqrstuvwxyz"
    specials = ("</s>", "<pad>", "<s>")
    uses_bos = True

    def __init__(self, tokenizer: Any) -> None:
        self.eos = getattr(tokenizer, "eos_token", None) or "</s>"
        self.markers = tuple(self.preprompt) + ("I", "O", "+", "/", "-", "=", self.eos)
        super().__init__(tokenizer)

    def _segments(self, pairs, query):
        head = np.array(self.ids(list(self.preprompt)))
        sep = np.array(self.ids([NL, "+", "/", "-", "=", "O"]))
        i_tok, tail = np.array([self.id_of["I"]]), np.array([self._nl, self.eos_id])
        segs: list[tuple[np.ndarray, int]] = [(head, 0)]
        for p in pairs:
            segs += [(i_tok, 0), (self.grid_ids(p.input), 0), (sep, 0),
                     (np.concatenate([self.grid_ids(p.output), tail]), 1)]
        if query is not None:
            segs += [(i_tok, 0), (self.grid_ids(query), 0), (sep, 2)]
        return segs

    def _strip_answer_tail(self, arr):
        return arr[:-1] if arr.size and arr[-1] == self._nl else arr


FORMATS: dict[str, type[TextFormat]] = {"qwen-chat": QwenChatFormat, "architects": ArchitectsFormat}
FORMAT_CHOICES = (AUTO,) + tuple(FORMATS)


def get_format(name: str, tokenizer: Any, *, model_dir: str | Path | None = None) -> TextFormat:
    """The named format bound to `tokenizer`; "auto" detects it (`detect_format`). FormatError for
    unknown names or unusable tokenizers."""
    if name == AUTO:
        name = detect_format(tokenizer, model_dir=model_dir)
    if name not in FORMATS:
        raise FormatError(f"unknown format {name!r}; choose one of {', '.join(FORMAT_CHOICES)}")
    return FORMATS[name](tokenizer)


def detect_format(tokenizer: Any, *, model_dir: str | Path | None = None) -> str:
    """The format a model's tokenizer was made for. Order: the format named by the model
    directory's `arc_format.json` (written by tiny-model, shrink-vocab) if it fits; else the one
    format whose pieces are all single tokens; if both fit (a full chat vocabulary also has every
    single letter), `qwen-chat`, since its chat markers are in the vocabulary. FormatError naming
    the directory and what each format lacks when neither fits."""
    fits, why = [], {}
    for name, cls in FORMATS.items():
        try:
            cls(tokenizer)
            fits.append(name)
        except FormatError as err:
            why[name] = str(err)
    hint = _format_hint(model_dir)
    if hint in fits:
        return hint
    if fits:
        return fits[0]
    where = f" of {model_dir}" if model_dir is not None else ""
    raise FormatError(f"model.format=auto: the tokenizer{where} fits no format: "
                      + "; ".join(why.values())
                      + ". Set model.format explicitly or shrink the vocabulary (shrink-vocab)")


def _format_hint(model_dir: str | Path | None) -> str | None:
    if model_dir is None:
        return None
    try:
        name = json.loads((Path(model_dir) / "arc_format.json").read_text(encoding="utf-8"))["format"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return name if name in FORMATS else None


def _single_token_id(tokenizer: Any, piece: str, fmt: str) -> int:
    from submission.model.tokenizer import binding_error

    try:
        ids = tokenizer.encode(piece, add_special_tokens=False)
    except Exception as err:
        # A tokenizer that cannot encode the piece at all (NVARC's WordLevel without its unk
        # token in the vocabulary, probed with the architects pieces) does not fit the format.
        if not binding_error(err):
            raise
        raise FormatError(f"format {fmt}: piece {piece!r} cannot be encoded by this tokenizer "
                          f"({err})") from err
    if len(ids) != 1:
        raise FormatError(f"format {fmt}: piece {piece!r} is {len(ids)} tokens {ids} in this "
                          "tokenizer, must be exactly one (shrink the vocabulary or pick another format)")
    back = tokenizer.convert_ids_to_tokens(ids[0])
    decoded = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    if decoded != piece and back != piece:
        raise FormatError(f"format {fmt}: piece {piece!r} round-trips to {decoded!r}")
    return int(ids[0])


def reduced_vocab(name: str, *, bos: bool = True) -> tuple[list[str], list[str]]:
    """(all pieces in id order, special pieces) of the format's own reduced vocabulary.

    qwen-chat: 16 pieces (10 digits, row break, `user`, `assistant`, 3 specials). architects: 65
    single characters (10 digits, row break, the 48 preprompt letters, `I O + / - =`), then `</s>`
    and `<pad>`, and with `bos` the begin token `<s>` last: 68 pieces (67 without)."""
    if name == "qwen-chat":
        return list(DIGITS) + [NL, "user", "assistant", "<|endoftext|>", "<|im_start|>",
                               "<|im_end|>"], list(QwenChatFormat.specials)
    if name == "architects":
        plain = list(DIGITS) + [NL] + list(ArchitectsFormat.preprompt) + ["I", "O", "+", "/", "-", "="]
        specials = ["</s>", "<pad>"] + (["<s>"] if bos else [])
        return plain + specials, specials
    raise FormatError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}")


def build_tokenizer(name: str, out_dir: str | Path | None = None, *, bos: bool = True):
    """The format's reduced-vocabulary tokenizer (WordLevel), optionally saved as a transformers one.
    The architects one has the begin token `<s>` (added by the tokenizer too) unless `bos` is False."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab, specials = reduced_vocab(name, bos=bos)
    plain = sorted((p for p in vocab if p not in specials), key=len, reverse=True)
    pad = "<|endoftext|>" if name == "qwen-chat" else "<pad>"
    eos = "<|im_end|>" if name == "qwen-chat" else "</s>"
    begin = "<s>" if name == "architects" and bos else None
    tk = Tokenizer(models.WordLevel({p: i for i, p in enumerate(vocab)}, unk_token=pad))
    pattern = "|".join(_regex_escape(p) for p in plain)
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=eos, pad_token=pad, unk_token=pad,
                                   bos_token=begin, add_bos_token=begin is not None,
                                   clean_up_tokenization_spaces=False)
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def _regex_escape(piece: str) -> str:
    """A regex matching `piece` literally (a row break is written `\\n`, not an escaped newline)."""
    import re

    return "\\n" if piece == NL else re.escape(piece)

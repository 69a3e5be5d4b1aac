"""Text formats: grids <-> token ids, one token per cell, with loss masks and parsing.

A format is bound to a tokenizer: every piece it writes (a digit, the row break, its markers) must
be exactly one token of that tokenizer, checked at construction (FormatError otherwise). Encoding is
a table lookup, so prompts never depend on a tokenizer's merges. Parsing never raises: anything that
is not a clean rectangular grid of 1..30 digits per side gives None. This module does not sample,
train or augment.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FormatError
from .grids import MAX_SIDE, Grid, Pair

DIGITS = tuple(str(d) for d in range(10))
NL = "\n"


class TextFormat(ABC):
    """Interface of a text format bound to a tokenizer (ids come from that tokenizer)."""

    name: str
    markers: tuple[str, ...]  # non-cell pieces the format writes, besides digits and the row break
    specials: tuple[str, ...]  # pieces that are special tokens of the reduced tokenizer
    eos: str  # piece that ends an answer

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.pieces = DIGITS + (NL,) + tuple(m for m in self.markers if m not in DIGITS + (NL,))
        self.id_of = {p: _single_token_id(tokenizer, p, self.name) for p in self.pieces}
        ids = list(self.id_of.values())
        if len(set(ids)) != len(ids):
            raise FormatError(f"format {self.name}: two pieces share one token id: {self.id_of}")
        self.piece_of = {i: p for p, i in self.id_of.items()}
        self._digit_ids = np.array([self.id_of[d] for d in DIGITS], dtype=np.int64)
        self._nl = self.id_of[NL]
        self.eos_id = self.id_of[self.eos]
        lut = np.full(max(ids) + 1, -1, dtype=np.int64)
        lut[self._digit_ids] = np.arange(10)
        self._cell_of_id = lut

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

    def encode_prompt(self, demos: Sequence[Pair], query: Grid) -> list[int]:
        """Demos then the query input, ending where the answer starts."""
        return np.concatenate([s for s, _ in self._segments(demos, query)]).tolist()

    def encode_answer(self, grid: Grid) -> list[int]:
        """The answer tokens the model should generate, terminator included."""
        return np.concatenate([s for s, kind in self._segments([Pair(grid, grid)], None)
                               if kind == 1]).tolist()

    def encode_training(self, pairs: Sequence[Pair], *, skip_first: bool = False
                        ) -> tuple[list[int], list[bool]]:
        """All pairs as a training text; the mask is True on every output (optionally not the first)."""
        segs = self._segments(pairs, None)
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
        """Generated answer ids -> grid, or None if they are not a clean grid."""
        try:
            arr = np.asarray(list(ids), dtype=np.int64)
        except (OverflowError, ValueError, TypeError):
            return None
        stop = np.flatnonzero(arr == self.eos_id)
        if stop.size:
            arr = arr[: stop[0]]
        arr = self._strip_answer_tail(arr)
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

    def _strip_answer_tail(self, arr: np.ndarray) -> np.ndarray:
        return arr


class QwenChatFormat(TextFormat):
    """NVARC's chat layout: `<|im_start|>user\\n{in}<|im_end|><|im_start|>assistant\\n{out}<|im_end|>`."""

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
    """ARChitects 2024 layout: preprompt, then `I{in}\\n+/-=O{out}\\n<eos>` per pair."""

    name = "architects"
    preprompt = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjklmnpqrstuvwxyz"
    specials = ("</s>",)

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


def get_format(name: str, tokenizer: Any) -> TextFormat:
    """The named format bound to `tokenizer` (FormatError for unknown names or unusable tokenizers)."""
    if name not in FORMATS:
        raise FormatError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[name](tokenizer)


def _single_token_id(tokenizer: Any, piece: str, fmt: str) -> int:
    ids = tokenizer.encode(piece, add_special_tokens=False)
    if len(ids) != 1:
        raise FormatError(f"format {fmt}: piece {piece!r} is {len(ids)} tokens {ids} in this "
                          "tokenizer, must be exactly one (shrink the vocabulary or pick another format)")
    back = tokenizer.convert_ids_to_tokens(ids[0])
    decoded = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    if decoded != piece and back != piece:
        raise FormatError(f"format {fmt}: piece {piece!r} round-trips to {decoded!r}")
    return int(ids[0])


def reduced_vocab(name: str) -> tuple[list[str], list[str]]:
    """(all pieces in id order, special pieces) of the format's own reduced vocabulary."""
    if name == "qwen-chat":
        return list(DIGITS) + [NL, "user", "assistant", "<|endoftext|>", "<|im_start|>",
                               "<|im_end|>"], list(QwenChatFormat.specials)
    if name == "architects":
        plain = list(DIGITS) + [NL] + list(ArchitectsFormat.preprompt) + ["I", "O", "+", "/", "-", "="]
        return plain + ["</s>", "<pad>"], ["</s>", "<pad>"]
    raise FormatError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}")


def build_tokenizer(name: str, out_dir: str | Path | None = None):
    """The format's reduced-vocabulary tokenizer (WordLevel), optionally saved as a transformers one."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab, specials = reduced_vocab(name)
    plain = sorted((p for p in vocab if p not in specials), key=len, reverse=True)
    pad = "<|endoftext|>" if name == "qwen-chat" else "<pad>"
    eos = "<|im_end|>" if name == "qwen-chat" else "</s>"
    tk = Tokenizer(models.WordLevel({p: i for i, p in enumerate(vocab)}, unk_token=pad))
    pattern = "|".join(_regex_escape(p) for p in plain)
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=eos, pad_token=pad, unk_token=pad,
                                   clean_up_tokenization_spaces=False)
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def _regex_escape(piece: str) -> str:
    """A regex matching `piece` literally (a row break is written `\\n`, not an escaped newline)."""
    import re

    return "\\n" if piece == NL else re.escape(piece)

"""Token ids and their character offsets for ASCII text, faster than asking the tokenizer for offsets.

Two facts about Hugging Face byte-level BPE tokenizers (Qwen2, Llama 3, GPT-2) make this exact:

- Every byte is one vocabulary character, so a token's string length is its byte count and, for
  ASCII text, its character count: token starts are a running sum. Asking the tokenizer for
  offsets instead costs a third of its time, and as much again to turn them into arrays.
- The tokenizer first cuts the text at special tokens (``<|im_start|>``, ``<image>``, ...) and
  encodes the pieces between them independently, so a piece seen before (a system prompt, a
  role header, an answer such as "Yes") can reuse its ids. In LLaVA's mix the same system
  prompt opens every sample and short answers repeat thousands of times.

Anything else (non-ASCII text, other tokenizer kinds, special tokens that strip whitespace)
returns None and goes through the tokenizer's offsets, as the reference path does. Both paths
are compared with :func:`vltool.data.tokenization.tokenize_conversation` in tests/data/test_prepare.py.
"""

import json
import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MEMO_ENTRIES = 1 << 18
"""Pieces whose ids are remembered (about 30 MB for LLaVA-mix-sized pieces); later new ones are just encoded."""
_ASCII_SAFE_NORMALIZERS = (None, "NFC", "NFD", "NFKC", "NFKD")


def _listed(spec: dict | None, key: str) -> list[dict]:
    """A component of ``tokenizer.json`` as a list of its parts (a ``Sequence`` unpacked)."""
    spec = spec or {}
    return spec.get(key, [spec]) if spec.get("type") == "Sequence" else [spec]


class ByteLevelEncoder:
    """Encodes ASCII texts with a byte-level BPE tokenizer, returning ids and token start offsets.

    Build it with :meth:`for_tokenizer`, which says None for a tokenizer this does not hold for.
    """

    def __init__(self, tokenizer: "PreTrainedTokenizerBase", byte_lengths: np.ndarray) -> None:
        self.backend = tokenizer.backend_tokenizer
        self.byte_lengths = byte_lengths
        special = {added.content: index for index, added in tokenizer.added_tokens_decoder.items() if added.special}
        self.special_ids = {content: np.array([index], np.int32) for content, index in special.items()}
        # longest first: the tokenizer matches the longest special token at a position
        pattern = "|".join(re.escape(content) for content in sorted(special, key=len, reverse=True))
        self.splitter = re.compile(f"({pattern})") if pattern else None
        self.memo: dict[str, np.ndarray] = {}

    @classmethod
    def for_tokenizer(cls, tokenizer: "PreTrainedTokenizerBase") -> "ByteLevelEncoder | None":
        """An encoder for ``tokenizer``, or None unless it is byte-level BPE with plain special tokens."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or backend.encode_special_tokens:  # special tokens read as text: no cuts there
            return None
        spec = json.loads(backend.to_str())
        byte_level = any(
            part.get("type") == "ByteLevel" for part in _listed(spec.get("pre_tokenizer"), "pretokenizers")
        )
        ascii_safe = all(
            n.get("type") in _ASCII_SAFE_NORMALIZERS for n in _listed(spec.get("normalizer"), "normalizers")
        )
        plain_added = all(
            not (token.get("lstrip") or token.get("rstrip") or token.get("single_word"))
            and (not token.get("special") or not token.get("normalized"))
            for token in spec.get("added_tokens", [])
        )
        if not (byte_level and ascii_safe and plain_added and spec.get("model", {}).get("type") == "BPE"):
            return None
        lengths = np.zeros(len(tokenizer), dtype=np.int64)
        for token, index in backend.get_vocab(with_added_tokens=False).items():
            lengths[index] = len(token)
        for index, added in tokenizer.added_tokens_decoder.items():
            lengths[index] = len(added.content.encode("utf-8"))
        return cls(tokenizer, lengths)

    def _pieces(self, text: str) -> list[str]:
        pieces = self.splitter.split(text) if self.splitter else [text]
        return [piece for piece in pieces if piece]

    def encode(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """``(ids [tokens] int32, starts [tokens] int64)`` for each ASCII text.

        Returns:
            One pair per text; None for a text whose tokens' lengths do not add up to it (never
            seen with a byte-level vocabulary; the check is cheap) and that needs the offsets path.
        """
        split = [self._pieces(text) for text in texts]
        fresh = {
            piece for pieces in split for piece in pieces if piece not in self.memo and piece not in self.special_ids
        }
        found = dict(zip(fresh, self.backend.encode_batch_fast(list(fresh), add_special_tokens=False), strict=True))
        new = {piece: np.asarray(encoding.ids, dtype=np.int32) for piece, encoding in found.items()}
        room = MEMO_ENTRIES - len(self.memo)
        if room > 0:
            self.memo.update(item for _, item in zip(range(room), new.items(), strict=False))
        results: list[tuple[np.ndarray, np.ndarray] | None] = []
        for text, pieces in zip(texts, split, strict=True):
            parts = [self.special_ids.get(piece) for piece in pieces]
            parts = [
                part if part is not None else self.memo.get(p, new.get(p))
                for part, p in zip(parts, pieces, strict=True)
            ]
            ids = np.concatenate(parts) if parts else np.empty(0, np.int32)
            sizes = self.byte_lengths[ids]
            ends = np.cumsum(sizes)
            results.append((ids, ends - sizes) if not ends.size or ends[-1] == len(text) else None)
        return results

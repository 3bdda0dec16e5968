"""Token ids and their character offsets for ASCII text, faster than asking the tokenizer for offsets.

In a Hugging Face byte-level BPE tokenizer (Qwen2, Llama 3, GPT-2) every byte is one vocabulary
character, so a token's string length is its byte count and, for ASCII text, its character
count: the tokens' start offsets are a running sum of their lengths. Asking the tokenizer for
offsets instead costs a fifth of its time, and about as much again to turn them into arrays.

Anything else (non-ASCII text, other tokenizer kinds, an added token that swallows the spaces
beside it, which the length check catches) gets None and goes through the tokenizer's offsets,
as the reference path does. Both paths are
compared with :func:`vltool.data.tokenization.tokenize_conversation` in tests/data/test_prepare.py.
"""

import json
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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

    @classmethod
    def for_tokenizer(cls, tokenizer: "PreTrainedTokenizerBase") -> "ByteLevelEncoder | None":
        """An encoder for ``tokenizer``, or None unless it is a byte-level BPE tokenizer."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        # each component's own JSON: serialising the whole tokenizer (vocabulary, merges) costs a second
        pre_tokenizer, normalizer = (
            json.loads(part.__getstate__()) if part is not None else None
            for part in (backend.pre_tokenizer, backend.normalizer)
        )
        byte_level = any(part.get("type") == "ByteLevel" for part in _listed(pre_tokenizer, "pretokenizers"))
        ascii_safe = all(n.get("type") in _ASCII_SAFE_NORMALIZERS for n in _listed(normalizer, "normalizers"))
        if not (byte_level and ascii_safe and type(backend.model).__name__ == "BPE"):
            return None
        lengths = np.zeros(len(tokenizer), dtype=np.int64)
        for token, index in backend.get_vocab(with_added_tokens=False).items():
            lengths[index] = len(token)
        for index, added in tokenizer.added_tokens_decoder.items():
            lengths[index] = len(added.content.encode("utf-8"))
        return cls(tokenizer, lengths)

    def encode(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """``(ids [tokens] int32, starts [tokens] int64)`` for each ASCII text.

        Returns:
            One pair per text; None for a text whose tokens' lengths do not add up to it (never
            seen with a byte-level vocabulary; the check is cheap) and that needs the offsets path.
        """
        results: list[tuple[np.ndarray, np.ndarray] | None] = []
        for text, encoding in zip(texts, self.backend.encode_batch_fast(texts, add_special_tokens=False), strict=True):
            ids = np.asarray(encoding.ids, dtype=np.int32)
            sizes = self.byte_lengths[ids]
            ends = np.cumsum(sizes)
            results.append((ids, ends - sizes) if not ends.size or ends[-1] == len(text) else None)
        return results

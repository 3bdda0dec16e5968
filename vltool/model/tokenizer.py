"""Tokenizers: the Qwen2 tokenizer shipped with vltool, and adding the image placeholder token."""

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2Tokenizer

from vltool.constants import IMAGE_TOKEN, QWEN2_SPECIAL_TOKENS, QWEN2_TOKENIZER_DIR
from vltool.errors import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt")
"""Any one of these makes a folder a tokenizer (fast, BPE vocabulary, SentencePiece, WordPiece)."""


def has_tokenizer_files(folder: Path) -> bool:
    """Whether ``folder`` holds a tokenizer's vocabulary."""
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(source: str | Path, missing: str) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained``, refusing what transformers 5 silently accepts.

    From a model folder without tokenizer files transformers builds an empty tokenizer (one
    token) with no error, and every prompt then encodes to nothing.

    Args:
        source: a folder or Hub id.
        missing: the error message when there is no tokenizer there (what to do about it).

    Raises:
        ConfigError: ``missing``.
    """
    if Path(source).is_dir() and not has_tokenizer_files(Path(source)):
        raise ConfigError(missing)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError):
        raise ConfigError(missing) from None
    if len(tokenizer) <= 1:
        raise ConfigError(missing)
    return tokenizer


def load_qwen2_tokenizer(path: str | Path = QWEN2_TOKENIZER_DIR) -> PreTrainedTokenizerBase:
    """Build Qwen2's byte-level BPE tokenizer from ``vocab.json`` and ``merges.txt``.

    ``Qwen2TokenizerFast(vocab_file=..., merges_file=...)`` silently builds an empty tokenizer
    in transformers 5.x; ``Qwen2Tokenizer(vocab=..., merges=...)`` builds the real one, with
    Qwen's NFC normaliser and split pattern. Qwen2's special tokens (151643-151645) are added.
    """
    path = Path(path)
    tokenizer = Qwen2Tokenizer(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"))
    tokenizer.add_tokens(list(QWEN2_SPECIAL_TOKENS), special_tokens=True)
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer


def add_image_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Register ``<image>`` as a special token (a no-op if present) and return its id."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

"""Constants shared by every part of vltool (one place, no magic numbers elsewhere)."""

from pathlib import Path

IGNORE_INDEX = -100
"""Label value for positions that carry no loss (prompt, padding, image placeholders)."""

IMAGE_TOKEN = "<image>"
"""Placeholder string for one image; expanded to N copies, one per visual token."""

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIGS_DIR = PACKAGE_DIR / "configs"
TEMPLATES_DIR = PACKAGE_DIR / "templates"
QWEN2_TOKENIZER_DIR = PACKAGE_DIR / "assets" / "qwen2_tokenizer"

QWEN2_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
"""Qwen2's added special tokens, ids 151643-151645 on top of the 151,643-token BPE vocabulary."""

RESUME_LATEST = "auto"
"""What a bare ``--resume`` means: continue from the work dir's latest checkpoint."""

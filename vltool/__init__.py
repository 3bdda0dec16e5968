"""vltool: train, convert, chat with and benchmark LLaVA-style vision-language models."""

__version__ = "0.1.0"

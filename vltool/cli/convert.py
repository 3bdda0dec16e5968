"""``vltool convert``: ``pth_to_hf`` (checkpoint -> model directory) and ``merge`` (adapter -> base)."""

import typer
from rich.console import Console

from vltool.cli.options import CFG_OPTIONS, collect_cfg_options

convert_app = typer.Typer(
    help="Turn training checkpoints into model directories, and merge adapters into their bases.",
    no_args_is_help=True,
)

MAX_SHARD_SIZE = typer.Option("2GB", "--max-shard-size", help="Largest safetensors shard, e.g. 2GB or 500MB.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace SAVE_DIR if it exists and is not empty.")


@convert_app.command("pth_to_hf", context_settings={"allow_extra_args": True})
def pth_to_hf(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="The training config (name, file, or the copy in the work dir)."),
    checkpoint: str = typer.Argument(..., help="An iter_N.pth file or a DeepSpeed checkpoint directory."),
    save_dir: str = typer.Argument(..., help="Where the model directory goes (must be empty)."),
    save_format: str = typer.Option(
        "vltool", "--save-format", help="vltool (every projector; loads in vltool) or huggingface (LLaVA)."
    ),
    fp32: bool = typer.Option(False, "--fp32", help="Save float32 weights (default bfloat16)."),
    max_shard_size: str = MAX_SHARD_SIZE,
    overwrite: bool = OVERWRITE,
    cfg_options: list[str] = CFG_OPTIONS,
) -> None:
    """Convert a checkpoint into a model directory that chat, mmbench and eval load."""
    from vltool.convert.pth_to_hf import convert_checkpoint  # heavy imports stay out of `vltool --help`

    _quiet_transformers()
    written = convert_checkpoint(
        config,
        checkpoint,
        save_dir,
        save_format=save_format,
        fp32=fp32,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
        cfg_options=collect_cfg_options(cfg_options, ctx),
    )
    adapters = f" (adapters kept: {', '.join(written['adapters'])})" if written["adapters"] else ""
    Console().print(f"saved {save_format} model to {save_dir}{adapters}", highlight=False, soft_wrap=True)


@convert_app.command("merge")
def merge(
    base: str = typer.Argument(..., help="The base model: a Hub id or a directory."),
    adapter: str = typer.Argument(..., help="A PEFT LoRA adapter directory."),
    save_dir: str = typer.Argument(..., help="Where the merged model goes (must be empty)."),
    is_clip: bool = typer.Option(False, "--is-clip", help="BASE is a CLIP/SigLIP vision model, not an LLM."),
    max_shard_size: str = MAX_SHARD_SIZE,
    overwrite: bool = OVERWRITE,
) -> None:
    """Merge a LoRA adapter into its base model and save the result with its tokenizer or image processor."""
    from vltool.convert.merge import merge_adapter

    _quiet_transformers()
    merge_adapter(base, adapter, save_dir, is_clip=is_clip, max_shard_size=max_shard_size, overwrite=overwrite)
    Console().print(f"saved merged model to {save_dir}", highlight=False, soft_wrap=True)


def _quiet_transformers() -> None:
    """No per-shard progress bars: a conversion prints one line when it is done."""
    from transformers.utils import logging

    logging.disable_progress_bar()

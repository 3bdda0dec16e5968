"""``vltool prepare-dataset CONFIG``: tokenise the training set once, into the cache later runs reuse."""

import typer
from rich.console import Console

from vltool.cli.options import CFG_OPTIONS, collect_cfg_options


def prepare_dataset(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="Config file or shipped config name."),
    cache_dir: str | None = typer.Option(
        None,
        "--cache-dir",
        help="Folder for prepared datasets; default: train_dataloader.dataset.cache_dir, else $VLTOOL_CACHE_DIR "
        "or ~/.cache/vltool/datasets.",
    ),
    cfg_options: list[str] = CFG_OPTIONS,
) -> None:
    """Tokenise the training set into a cache that `vltool train` loads instead of tokenising again.

    No model weights are loaded, so a 7B recipe prepares on a CPU machine with only its config and tokenizer files.
    """
    from vltool.engine.config import load_config, train_dataset_cfg  # heavy imports stay out of `vltool --help`

    cfg = load_config(config, collect_cfg_options(cfg_options, ctx))
    dataset_cfg = train_dataset_cfg(cfg)
    configured = dataset_cfg.get("cache_dir")
    dataset_cfg.cache_dir = cache_dir or configured
    # imported only now: torch, transformers and the model code take seconds, and a bad config fails first
    from vltool.engine.data_parts import build_data_parts, build_train_dataset, prepare_data

    prepare_data(cfg, with_hooks=False)  # the hooks only run in training
    # the same function and tokenizer as training, so the cache key is the one `vltool train` computes;
    # no weights load: the visual-token count comes from the encoder's and projector's configs
    dataset = build_train_dataset(cfg, build_data_parts(cfg))
    summary = dataset.report.summary(dataset_cfg.get("max_length", 2048), dataset_cfg.get("truncation", "truncate"))
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"{dataset_cfg.data_path}: {summary}")
    console.print(f"prepared dataset: {dataset.store_path}")
    if cache_dir and cache_dir != configured:
        console.print(
            f"train with --cfg-options train_dataloader.dataset.cache_dir={dataset_cfg.cache_dir} to reuse it"
        )

"""``vltool prepare-dataset CONFIG``: tokenise the training set once, into the cache later runs reuse."""

import typer
from rich.console import Console

from vltool.cli.options import CFG_OPTIONS, collect_cfg_options


def prepare_dataset(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="Config file or shipped config name."),
    cache_dir: str | None = typer.Option(
        None, "--cache-dir", help="Folder for the tokenised dataset; default: train_dataloader.dataset.cache_dir."
    ),
    cfg_options: list[str] = CFG_OPTIONS,
) -> None:
    """Tokenise the training set into a cache that `vltool train` loads instead of tokenising again."""
    from vltool.engine.config import load_config  # heavy imports stay out of `vltool --help`
    from vltool.errors import ConfigError

    cfg = load_config(config, collect_cfg_options(cfg_options, ctx))
    if "dataset" not in cfg.get("train_dataloader", {}):
        raise ConfigError("config has no train_dataloader.dataset entry; see docs/data_formats.md.")
    dataset_cfg = cfg.train_dataloader.dataset
    configured = dataset_cfg.get("cache_dir")
    dataset_cfg.cache_dir = cache_dir or configured
    if not dataset_cfg.cache_dir:
        raise ConfigError("no cache folder: pass --cache-dir DIR or set train_dataloader.dataset.cache_dir.")
    # imported only now: torch, transformers and the model code take seconds, and a bad config fails first
    from vltool.engine.runner import build_parts, build_train_dataset, prepare_data

    prepare_data(cfg)
    # the same path as training, so the cache key is the one `vltool train` computes
    dataset = build_train_dataset(cfg, build_parts(cfg))
    summary = dataset.report.summary(dataset_cfg.get("max_length", 2048), dataset_cfg.get("truncation", "truncate"))
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"{dataset_cfg.data_path}: {summary}")
    console.print(f"tokenised dataset: {dataset.cache_file}")
    if dataset_cfg.cache_dir != configured:
        console.print(
            f"train with --cfg-options train_dataloader.dataset.cache_dir={dataset_cfg.cache_dir} to reuse it"
        )

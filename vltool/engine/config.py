"""Find, list, copy and load configs: a CONFIG argument is a path or a shipped config's name."""

import difflib
import fnmatch
import re
from pathlib import Path

from mmengine.config import Config, ConfigDict, DictAction

from vltool.constants import CONFIGS_DIR
from vltool.errors import ConfigError

CONFIG_KEYS: dict[str, str] = {
    "model": "the vision-language model: vision_encoder, projector, llm, llm_lora, llm_quantization, freeze flags",
    "tokenizer": "the LLM's tokenizer",
    "image_processor": "the vision encoder's image processor",
    "template": "the chat template's name",
    "train_dataloader": "batch size, workers, dataset, sampler, collate function",
    "data_preparation": "a step that writes the dataset before training (the demo's)",
    "dataset_prepare_timeout": "seconds the other ranks wait while rank 0 tokenises",
    "optim_wrapper": "optimizer, gradient clipping, accumulative_counts",
    "lr_schedule": "warmup_ratio and min_lr_ratio of the warmup + cosine schedule",
    "param_scheduler": "mmengine schedulers that replace lr_schedule",
    "train_cfg": "max_epochs (iterations derived at build time) or max_iters",
    "precision": "autocast dtype on a GPU: bf16, fp16 or fp32",
    "pretrain_stage": "the previous stage's config name or work dir, whose last checkpoint loads first",
    "pretrained_pth": "an explicit previous-stage checkpoint (overrides pretrain_stage)",
    "load_from": "a checkpoint to start from (weights only)",
    "resume": "True (latest in the work dir) or a checkpoint path",
    "work_dir": "where checkpoints and logs go",
    "launcher": "none, pytorch or slurm",
    "default_hooks": "mmengine's timer, logger, scheduler and checkpoint hooks",
    "custom_hooks": "vltool's hooks (progress, loss curve, evaluation, ...)",
    "log_processor": "mmengine's log smoothing",
    "visualizer": "mmengine's visualizer (where scalars are written)",
    "env_cfg": "mmengine's environment settings (dist backend, cudnn)",
    "randomness": "seed and determinism",
    "find_unused_parameters": "DDP's unused-parameter search (default True)",
    "model_wrapper_cfg": "mmengine's DDP wrapper settings",
}
"""Every top-level key something in vltool reads, and what it is. A composed config keeps only
these: a recipe's helper variables (``llm``, ``llm_lora``, ``stage``, ``data_root``, ...) are
gone once ``model`` and the runner's sections are built from them, so an override can only
reach a key that takes effect."""

OPTIONAL_KEYS = (
    "train_cfg.max_iters",
    "train_cfg.max_epochs",
    "model.llm_quantization",
    "model.llm_lora",
    "model.vision_encoder_lora",
    "model.llm_gradient_checkpointing",
    "model.vision_encoder_gradient_checkpointing",
    "model.llm.attn_implementation",
)
"""Keys vltool reads that a recipe may leave out: suggested for a misspelt override too."""


def shipped_configs() -> dict[str, Path]:
    """Every shipped experiment config by name (file stem), ``_base_`` pieces excluded."""
    return {
        path.stem: path
        for path in sorted(CONFIGS_DIR.rglob("*.py"))
        if "_base_" not in path.parts and path.name != "__init__.py"
    }


def list_configs(pattern: str | None = None) -> list[str]:
    """Names of shipped configs, optionally filtered by a glob or substring ``pattern``."""
    names = list(shipped_configs())
    if pattern:
        glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
        names = [name for name in names if fnmatch.fnmatch(name, glob)]
    return names


def resolve_config(name_or_path: str) -> Path:
    """A config file path from a path or a shipped name.

    Raises:
        ConfigError: neither a file nor a known name; close names are suggested.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    configs = shipped_configs()
    if name_or_path in configs:
        return configs[name_or_path]
    close = difflib.get_close_matches(path.stem, list(configs), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else " Run `vltool list-cfg` to see the shipped configs."
    raise ConfigError(f"config '{name_or_path}' is neither a file nor a shipped config name.{hint}")


def parse_cfg_options(options: list[str]) -> dict[str, object]:
    """``["a.b=1", "c=[1,2]"]`` -> ``{"a.b": 1, "c": [1, 2]}`` with mmengine's value parsing."""
    parsed: dict[str, object] = {}
    for option in options:
        if "=" not in option:
            raise ConfigError(f"--cfg-options expects KEY=VALUE, got '{option}'.")
        key, value = option.split("=", 1)
        parsed[key] = DictAction._parse_iterable(value)
    return parsed


def load_config(name_or_path: str, cfg_options: list[str] | None = None) -> Config:
    """Load a config, keep only the keys vltool reads (:data:`CONFIG_KEYS`), apply ``--cfg-options``.

    Raises:
        ConfigError: the file is missing, fails to load, or an override names a key that
            nothing reads (the message names the closest real key).
    """
    path = resolve_config(name_or_path)
    try:
        cfg = Config.fromfile(str(path))
    except Exception as err:  # mmengine raises many kinds; all mean "this file does not load"
        raise ConfigError(f"{path}: cannot load config ({type(err).__name__}: {err}).") from None
    for key in [key for key in cfg.keys() if key not in CONFIG_KEYS]:
        # helper variables and the classes the file imported; ``Config.pop`` would import each lazy class
        del cfg._cfg_dict[key]
    overrides = parse_cfg_options(cfg_options or [])
    for key in overrides:
        _check_key_exists(cfg, key, path)
    cfg.merge_from_dict(overrides)
    return cfg


def train_dataset_cfg(cfg: Config) -> ConfigDict:
    """``cfg.train_dataloader.dataset``.

    Raises:
        ConfigError: the config has none.
    """
    if "dataset" not in cfg.get("train_dataloader", {}):
        raise ConfigError("config has no train_dataloader.dataset entry; see docs/data_formats.md.")
    return cfg.train_dataloader.dataset


def _check_key_exists(cfg: Config, dotted: str, path: Path) -> None:
    """An override must reach a key vltool reads.

    Its first part is one of :data:`CONFIG_KEYS`, and existing dicts lead down to its last part
    (which may be new: ``train_cfg.max_iters`` on an epoch-based recipe). Catches typos
    (``trian_cfg``) and helper variables of the recipe's source (``llm_lora.r``), which no
    longer exist once ``model`` is composed; the message names the closest real key.
    """
    parts = dotted.split(".")
    if parts[0] not in CONFIG_KEYS:
        raise ConfigError(f"--cfg-options {dotted}: nothing reads '{parts[0]}' in {path.name}.{_closest(cfg, dotted)}")
    node: object = cfg
    for depth, part in enumerate(parts[:-1]):
        keys = [str(key) for key in node.keys()] if hasattr(node, "keys") else []
        if part not in keys:
            raise ConfigError(
                f"--cfg-options {dotted}: '{'.'.join(parts[: depth + 1])}' is not a key of {path.name}."
                f"{_closest(cfg, dotted)}"
            )
        node = node[part]


def _closest(cfg: Config, dotted: str) -> str:
    """`` Did you mean 'model.llm_lora.r'?`` for the real key closest to ``dotted``, or ``""``.

    A key that ends like ``dotted`` (a helper's copy inside ``model``) comes first; otherwise the
    key sharing most of ``dotted``'s words (``llm_name_or_path`` ->
    ``model.llm.pretrained_model_name_or_path``), ties going to the most alike spelling.
    """
    keys = sorted(set(_dotted_keys(cfg)) | set(OPTIONAL_KEYS))
    by_ending = sorted((key for key in keys if key.endswith(f".{dotted}")), key=len)
    if by_ending:
        return f" Did you mean '{by_ending[0]}'?"
    words = set(re.split(r"[._]", dotted))

    def score(key: str) -> tuple[float, float]:
        shared = len(words & set(re.split(r"[._]", key))) / len(words)
        return shared, difflib.SequenceMatcher(None, dotted, key).ratio()

    best = max(keys, key=score, default=None)
    return f" Did you mean '{best}'?" if best is not None and max(score(best)) >= 0.5 else ""


def _dotted_keys(node: object, prefix: str = "") -> list[str]:
    """Every ``a.b.c`` path of nested dicts under ``node`` (lists are not entered)."""
    keys = []
    for key, value in node.items() if hasattr(node, "items") else []:
        path = f"{prefix}{key}"
        keys.append(path)
        if isinstance(value, dict):
            keys += _dotted_keys(value, f"{path}.")
    return keys


def copy_config(name: str, dest_dir: str) -> Path:
    """Write a shipped config, flattened (its ``_base_`` pieces merged in), into ``dest_dir``.

    The copy is self-contained: it loads from any directory, which a copy of a file that
    inherits through relative ``read_base`` imports would not.
    """
    source = resolve_config(name)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f"{source.stem}.py"
    if target.exists():
        raise ConfigError(f"{target} already exists; remove it or choose another directory.")
    load_config(str(source)).dump(str(target))
    target.write_text(
        f"# Copied from the vltool config '{source.stem}' (flattened by `vltool copy-cfg`).\n" + target.read_text()
    )
    return target

"""Find, list, copy and load configs: a CONFIG argument is a path or a shipped config's name."""

import difflib
import fnmatch
from pathlib import Path

from mmengine.config import Config, ConfigDict, DictAction

from vltool.constants import CONFIGS_DIR
from vltool.errors import ConfigError


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
    """Load a config and apply ``--cfg-options`` overrides.

    Raises:
        ConfigError: the file is missing, fails to load, or an override names a key that
            does not exist.
    """
    path = resolve_config(name_or_path)
    try:
        cfg = Config.fromfile(str(path))
    except Exception as err:  # mmengine raises many kinds; all mean "this file does not load"
        raise ConfigError(f"{path}: cannot load config ({type(err).__name__}: {err}).") from None
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
    """Overrides may set new leaves but their parent must exist (catches typos like ``trian_cfg``)."""
    node: object = cfg
    parts = dotted.split(".")
    for depth, part in enumerate(parts[:-1]):
        keys = list(node.keys()) if hasattr(node, "keys") else []
        if part not in keys:
            close = difflib.get_close_matches(part, [str(k) for k in keys], n=1)
            hint = f" Did you mean '{'.'.join(parts[:depth] + close)}'?" if close else ""
            raise ConfigError(f"--cfg-options {dotted}: '{part}' is not a key of {path.name}.{hint}")
        node = node[part]


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

"""What the training dataset is built from, and building it: one path for train, prepare-dataset and check-dataset.

``vltool train`` builds the whole model and takes these parts from it. ``check-dataset`` and
``prepare-dataset`` build them alone with :func:`build_data_parts`: the visual-token count comes
from the encoder's and projector's configs (:mod:`vltool.model.visual_tokens`), so no weights
load and neither peft, bitsandbytes nor DeepSpeed is imported; a 7B recipe checks on a CPU
machine that has only its config and tokenizer files. The tokenizer is built exactly as
training builds it, so the tokenised-dataset cache key is the one ``vltool train`` computes.
"""

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmengine.config import Config
from transformers import PreTrainedTokenizerBase
from transformers.image_processing_utils import BaseImageProcessor

from vltool.build import build
from vltool.data.dataset import VisionLanguageDataset
from vltool.data.distributed import DATASET_PREPARE_TIMEOUT_KEY, DEFAULT_DATASET_PREPARE_TIMEOUT_S, build_dataset_once
from vltool.engine.config import train_dataset_cfg
from vltool.errors import ConfigError
from vltool.model.config_parts import check_required_keys, part_cfg
from vltool.model.tokenizer import TOKENIZER_FILES, add_image_token, has_tokenizer_files
from vltool.model.visual_tokens import image_seq_length_from_config, load_error
from vltool.templates import Template, load_template

if TYPE_CHECKING:  # the model builder imports peft and bitsandbytes, which the dataset commands never need
    from vltool.model.builder import Parts


@dataclass
class DataParts:
    """What tokenising and loading the training data needs from the model.

    Attributes:
        tokenizer: the config's tokenizer with ``<image>`` added (as ``build_model`` adds it).
        template: the chat format.
        image_processor: the vision encoder's image processor.
        image_seq_length: visual tokens (image-token placeholders) per image.
    """

    tokenizer: PreTrainedTokenizerBase
    template: Template
    image_processor: BaseImageProcessor
    image_seq_length: int

    @classmethod
    def from_parts(cls, parts: "Parts") -> "DataParts":
        """The data parts of a built model's parts, the visual-token count taken from the model."""
        return cls(parts.tokenizer, parts.template, parts.image_processor, parts.model.image_seq_length)


def build_data_parts(cfg: Config) -> DataParts:
    """Tokenizer, template, image processor and visual-token count of ``cfg``, without building the model.

    Raises:
        ConfigError: a key is missing, or a tokenizer, image processor or model config cannot be
            read (a folder without the file, a Hub id with no network); the message names the key.
    """
    check_required_keys(cfg)
    tokenizer = _build_tokenizer(cfg)
    template = load_template(cfg.template)
    image_processor = _build_from_files(cfg, "image_processor")
    return DataParts(tokenizer, template, image_processor, image_seq_length_from_config(cfg.model))


def _build_tokenizer(cfg: Config) -> PreTrainedTokenizerBase:
    """The config's tokenizer with ``<image>`` added, as training builds it."""
    source = _source(part_cfg(cfg, "tokenizer"))
    # from a folder without vocabulary files transformers 5 fails obscurely or builds an empty tokenizer
    if source is not None and Path(source).is_dir() and not has_tokenizer_files(Path(source)):
        raise ConfigError(
            f"tokenizer.pretrained_model_name_or_path='{source}' has no tokenizer files (one of "
            f"{', '.join(TOKENIZER_FILES)}); point it at the LLM's folder or Hub id."
        )
    tokenizer = _build_from_files(cfg, "tokenizer")
    add_image_token(tokenizer)
    return tokenizer


def _source(part: Any) -> str | None:
    """The folder or Hub id a ``from_pretrained`` dict loads from, if it names one."""
    source = part.get("pretrained_model_name_or_path") if isinstance(part, dict) else None
    return None if source is None else str(source)


def _build_from_files(cfg: Config, key: str) -> Any:
    """``build(cfg[key])``, with files that do not load reported against ``key``."""
    try:
        return build(part_cfg(cfg, key))
    except (OSError, ValueError) as err:
        source = _source(part_cfg(cfg, key))
        if source is None:
            raise
        raise load_error(f"{key}.pretrained_model_name_or_path", source, err) from None


def prepare_data(cfg: Config, *, with_hooks: bool = True) -> None:
    """Run the config's ``data_preparation`` step (the demo writes its dataset there), if the run reads what it writes.

    A step that names its output folder as ``data_root`` runs only when a path the command reads lies
    under that folder: the training dataset's ``data_path`` or ``image_folder``, or, with
    ``with_hooks`` (``vltool train``), a path a custom hook reads (the demo's held-out questions and
    sample images). So the demo with ``train_dataloader.dataset.data_path`` pointed at other data
    writes nothing for ``check-dataset`` or ``prepare-dataset``. A step without ``data_root`` always runs.

    Args:
        cfg: the loaded config.
        with_hooks: count the custom hooks' paths as read (training runs them; the dataset commands do not).
    """
    step = cfg.get("data_preparation")
    if not step:
        return
    data_root = step.get("data_root")
    if data_root is None or any(_is_under(path, data_root) for path in _read_paths(cfg, with_hooks)):
        build(step)


def _read_paths(cfg: Config, with_hooks: bool) -> list[str]:
    """The paths a run of ``cfg`` reads: the training dataset's, and with ``with_hooks`` every string of its hooks."""
    dataset = train_dataset_cfg(cfg)
    paths = [str(dataset[key]) for key in ("data_path", "image_folder") if dataset.get(key)]
    return paths + (_strings(cfg.get("custom_hooks", [])) if with_hooks else [])


def _strings(node: Any) -> list[str]:
    """Every string inside nested dicts and lists."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, (list, tuple)):
        return [text for item in node for text in _strings(item)]
    return []


def _is_under(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or inside it (both relative to the current directory unless absolute)."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def dataset_prepare_timeout(cfg: Config) -> float:
    """Seconds the other ranks wait while rank 0 prepares data (the config's ``dataset_prepare_timeout``)."""
    return float(cfg.get(DATASET_PREPARE_TIMEOUT_KEY, DEFAULT_DATASET_PREPARE_TIMEOUT_S))


def build_train_dataset(cfg: Config, parts: DataParts) -> VisionLanguageDataset:
    """The training dataset of ``cfg`` over ``parts``; under several processes only rank 0 tokenises it."""
    build_dataset = partial(
        build,
        train_dataset_cfg(cfg),
        tokenizer=parts.tokenizer,
        template=parts.template,
        image_processor=parts.image_processor,
        image_seq_length=parts.image_seq_length,
    )
    return build_dataset_once(build_dataset, dataset_prepare_timeout(cfg))

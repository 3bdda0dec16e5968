"""BLIP-2's ViT and Q-Former as a vltool vision encoder: 32 query tokens of width 768 per image.

The modules are transformers' own (``Blip2VisionModel``, ``Blip2QFormerModel`` and the composite's
``query_tokens``); this module only loads them from a BLIP-2 checkpoint and puts them behind
vltool's encoder interface. Three things it does that are easy to get wrong:

- ``Blip2VisionModel.from_pretrained(<composite BLIP-2 repo>)`` (and the Q-Former's) leaves every
  weight random with only a warning in transformers 5.23. Here the ``vision_model.*``, ``qformer.*``
  and ``query_tokens`` tensors are read by name, from only the shards the index json says hold
  them (the language model, 11B parameters for Flan-T5-XXL, is never read or downloaded), and
  loaded with ``strict=True``.
- The Q-Former and the query tokens stay in fp32 whatever dtype the ViT loads in, and the
  Q-Former computes in fp32 even under autocast (it is small: 32 queries); its output is cast to
  the ViT's dtype before the projector, as ``Blip2ForConditionalGeneration`` does.
- Frozen parts stay in eval mode when the runner calls ``train()``: the Q-Former has dropout 0.1,
  which would otherwise change the features of a frozen encoder at every step.

``vision_model.post_layernorm`` is LAVIS' ``ln_vision``: the Q-Former reads the ViT's last
hidden state after it, CLS token included, as ``Blip2Model.get_qformer_features`` does.
"""

import json
import math
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import save_torch_state_dict
from PIL import Image
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoConfig, Blip2Config, Blip2QFormerModel, Blip2VisionModel
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import cached_file

from vltool.errors import ConfigError

PREFIXES = ("vision_model.", "qformer.")
QUERY_TOKENS = "query_tokens"
"""The composite checkpoint's names for what the encoder reads; the same names as here."""

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")


def is_encoder_tensor(name: str) -> bool:
    """Whether a checkpoint tensor belongs to the ViT, the Q-Former or the query tokens."""
    return name == QUERY_TOKENS or name.startswith(PREFIXES)


class Blip2VisionQFormer(nn.Module):
    """BLIP-2's image half: ViT, query tokens and Q-Former, named as in a BLIP-2 checkpoint.

    Build it with :meth:`from_pretrained` (weights) or :meth:`from_config` (shapes only, for
    ``check-dataset``, which builds on the meta device).

    Args:
        config: a BLIP-2 composite config; its ``text_config`` is not used.
    """

    def __init__(self, config: Blip2Config) -> None:
        super().__init__()
        # not ``config``: PEFT reads a wrapped model's ``config`` as a transformers model's
        self.blip2_config = config
        self.vision_model = Blip2VisionModel(config.vision_config)
        # [1, num_query_tokens, qformer_hidden]; registered after the ViT so that the first
        # parameter, whose dtype vltool casts pixels to, is the ViT's
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))
        self.qformer = Blip2QFormerModel(config.qformer_config)

    @classmethod
    def from_config(cls, config: Blip2Config) -> "Blip2VisionQFormer":
        """The modules with placeholder weights (what ``check-dataset`` builds on the meta device)."""
        return cls(config)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str, dtype: torch.dtype | str = "auto", **hub_kwargs: Any
    ) -> "Blip2VisionQFormer":
        """The ViT, query tokens and Q-Former of a BLIP-2 checkpoint (a folder or a Hub id).

        Args:
            pretrained_model_name_or_path: e.g. ``Salesforce/blip2-flan-t5-xxl`` or a local copy.
            dtype: the ViT's dtype; ``"auto"`` keeps the checkpoint's. The Q-Former and the
                query tokens are always fp32.
            hub_kwargs: ``cache_dir``, ``revision``, ``local_files_only``, ``token``, ... as for
                ``from_pretrained``.

        Raises:
            ConfigError: not a BLIP-2 checkpoint, unreadable files, or tensors missing,
                unexpected or misshapen, in one line naming the file.
        """
        if is_deepspeed_zero3_enabled():
            raise ConfigError(
                "the BLIP-2 encoder does not load under DeepSpeed ZeRO-3; its frozen ~1B parameters fit on each "
                "GPU: use --deepspeed zero2."
            )
        config = read_blip2_config(pretrained_model_name_or_path, hub_kwargs)
        tensors, sources = read_encoder_tensors(encoder_weight_files(pretrained_model_name_or_path, hub_kwargs))
        tensors = _in_load_dtypes(tensors, dtype)
        with torch.device("meta"):  # no random init, no second copy of the weights
            model = cls(config)
        check_tensors(model, tensors, sources, pretrained_model_name_or_path)
        model.load_state_dict(tensors, strict=True, assign=True)
        return model

    def save_pretrained(self, folder: Path, dtype: torch.dtype, max_shard_size: str = "5GB") -> None:
        """Write a BLIP-2-style folder that :meth:`from_pretrained` reads back exactly.

        ``config.json`` is the composite config; the tensors keep the checkpoint's names. The
        ViT is saved in ``dtype``, the Q-Former and the query tokens in fp32, as they load.

        Args:
            folder: created; must not exist.
            dtype: the ViT's saved dtype.
            max_shard_size: largest safetensors file, ``2GB`` (an index json when it shards).
        """
        folder.mkdir()
        self.blip2_config.save_pretrained(folder)
        state = {
            name: value.detach().to(dtype if name.startswith("vision_model.") else torch.float32)
            for name, value in self.state_dict().items()
        }
        save_torch_state_dict(state, folder, max_shard_size=max_shard_size)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        """Recompute the ViT's and the Q-Former's layers in the backward pass (transformers' method name)."""
        for part in (self.vision_model, self.qformer):
            part.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode images as ``Blip2Model.get_qformer_features`` does.

        Args:
            pixel_values: ``[batch, 3, image_size, image_size]``, normalised with CLIP's mean and std.

        Returns:
            ``[batch, num_query_tokens, qformer_hidden]`` in the ViT's dtype.
        """
        image_embeds = self.vision_model(pixel_values=pixel_values).last_hidden_state  # [b, 1 + patches, vit]
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)  # [b, queries, qformer_hidden]
        # fp32 weights are not enough under autocast, which would run the matmuls in bf16
        with torch.autocast(device_type=image_embeds.device.type, enabled=False):
            features = self.qformer(
                query_embeds=queries,
                encoder_hidden_states=image_embeds.to(queries.dtype),
                encoder_attention_mask=image_mask,
            ).last_hidden_state
        return features.to(image_embeds.dtype)


class Blip2QFormerEncoder(nn.Module):
    """BLIP-2's ViT + Q-Former behind vltool's vision-encoder interface.

    Its "patches" are the Q-Former's query outputs: ``num_patches`` is ``num_query_tokens`` (32)
    and ``hidden_size`` the Q-Former's width (768), so a ``LinearProjector`` after it is
    MiniGPT-4's ``llm_proj``. ``model`` is what LoRA wraps (``vision_encoder_lora``).

    Args:
        model: :meth:`Blip2VisionQFormer.from_pretrained`'s result.
    """

    def __init__(self, model: Blip2VisionQFormer) -> None:
        super().__init__()
        self.model = model
        # read once: ``model`` may later be wrapped (LoRA), which hides its attributes; the
        # parts themselves stay the same objects under PEFT, which edits them in place
        self.config = model.blip2_config
        self.parts: tuple[nn.Module, ...] = (model.vision_model, model.qformer)  # not registered twice

    @property
    def image_size(self) -> int:
        """Input resolution: images are ``[3, image_size, image_size]``."""
        return self.config.vision_config.image_size

    @property
    def hidden_size(self) -> int:
        """Width of each output token (the Q-Former's)."""
        return self.config.qformer_config.hidden_size

    @property
    def num_patches(self) -> int:
        """Output tokens per image: the query tokens."""
        return self.config.num_query_tokens

    def train(self, mode: bool = True) -> "Blip2QFormerEncoder":
        """Set training mode, but keep each part (ViT, Q-Former) without a trainable parameter in eval mode.

        A part with trainable parameters (unfrozen, or with LoRA adapters) follows ``mode``.
        """
        super().train(mode)
        for part in self.parts:
            if not any(param.requires_grad for param in part.parameters()):
                part.eval()
        return self

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[num_images, 3, H, W]`` -> ``[num_images, num_query_tokens, qformer_hidden]``."""
        return self.model(pixel_values)


# ---- loading: only the encoder's tensors, from only the files that hold them


def _cached(source: str, filename: str, hub_kwargs: dict[str, Any]) -> str | None:
    """The local path of ``filename`` in a folder or Hub repo (downloaded if needed), or None if it has none."""
    try:
        return cached_file(source, filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    except OSError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"BLIP-2 checkpoint '{source}': cannot get {filename} ({first}).") from None


def read_blip2_config(source: str, hub_kwargs: dict[str, Any]) -> Blip2Config:
    """The composite config of a BLIP-2 checkpoint; anything else is a :class:`ConfigError`."""
    try:
        config = AutoConfig.from_pretrained(source, **hub_kwargs)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"BLIP-2 checkpoint '{source}': cannot read its config ({first}); without network, download it first "
            "or point model.vision_encoder.model.pretrained_model_name_or_path at a local folder."
        ) from None
    if not isinstance(config, Blip2Config):
        raise ConfigError(f"'{source}' is a {type(config).__name__}, not a BLIP-2 checkpoint (Blip2Config).")
    return config


def encoder_weight_files(source: str, hub_kwargs: dict[str, Any]) -> list[Path]:
    """The weight files holding the encoder's tensors: the shards the index names, or the single file."""
    for index_name in INDEX_FILES:
        index = _cached(source, index_name, hub_kwargs)
        if index is None:
            continue
        try:
            weight_map = json.loads(Path(index).read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{index}: no readable 'weight_map' ({type(error).__name__}: {error}).") from None
        shards = sorted({shard for name, shard in weight_map.items() if is_encoder_tensor(name)})
        if not shards:
            raise ConfigError(f"{index} lists no vision_model.*, qformer.* or query_tokens tensors.")
        return [Path(_cached(source, shard, hub_kwargs) or Path(index).parent / shard) for shard in shards]
    for name in SINGLE_FILES:
        path = _cached(source, name, hub_kwargs)
        if path is not None:
            return [Path(path)]
    raise ConfigError(f"BLIP-2 checkpoint '{source}' has no {' or '.join(SINGLE_FILES)} and no index json.")


def _in_load_dtypes(tensors: dict[str, torch.Tensor], vision_dtype: torch.dtype | str) -> dict[str, torch.Tensor]:
    """The ViT's tensors in ``vision_dtype`` (``"auto"``: as stored), the Q-Former's and the queries in fp32."""
    if isinstance(vision_dtype, str) and vision_dtype != "auto":
        vision_dtype = getattr(torch, vision_dtype)
    cast = {}
    for name, value in tensors.items():
        if not name.startswith("vision_model."):
            value = value.float()
        elif vision_dtype != "auto":
            value = value.to(vision_dtype)
        cast[name] = value
    return cast


def read_encoder_tensors(files: list[Path]) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """The encoder's tensors from ``files``, and the file each came from; the other tensors are not read.

    safetensors reads tensors by name; ``.bin`` files are memory-mapped, so the language model's
    bytes in a mixed shard stay on disk.
    """
    tensors: dict[str, torch.Tensor] = {}
    sources: dict[str, Path] = {}
    for path in files:
        try:
            if path.suffix == ".safetensors":
                with safe_open(path, framework="pt") as weights:
                    found = {name: weights.get_tensor(name) for name in weights.keys() if is_encoder_tensor(name)}
            else:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                found = {name: value for name, value in state.items() if is_encoder_tensor(name)}
        except (OSError, SafetensorError, RuntimeError, ValueError, AttributeError) as error:
            raise ConfigError(f"{path}: cannot read weights ({type(error).__name__}: {error}).") from None
        tensors.update(found)
        sources.update(dict.fromkeys(found, path))
    return tensors, sources


def check_tensors(
    model: Blip2VisionQFormer, tensors: dict[str, torch.Tensor], sources: dict[str, Path], source: str
) -> None:
    """Raise a one-line :class:`ConfigError` unless ``tensors`` are exactly ``model``'s, shape for shape."""
    expected = {name: value.shape for name, value in model.state_dict().items()}
    for name, shape in expected.items():
        if name not in tensors:
            raise ConfigError(f"BLIP-2 checkpoint '{source}' has no {name} (encoder weights incomplete).")
        if tensors[name].shape != shape:
            raise ConfigError(
                f"{sources[name]}: {name} has shape {list(tensors[name].shape)}, but config.json gives {list(shape)}."
            )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ConfigError(f"{sources[unexpected[0]]}: unexpected tensor {unexpected[0]} for BLIP-2's config.")


# ---- training-time augmentation


class RandomResizedCropFlip:
    """BLIP-2's training augmentation (LAVIS ``blip2_image_train``), on PIL images, without torchvision.

    torchvision's ``RandomResizedCrop(size, scale, ratio, BICUBIC)`` then
    ``RandomHorizontalFlip(flip_probability)``: the same algorithm and the same draws from
    torch's generator, so a seeded run crops as torchvision would. The result is
    ``size x size``; the image processor's squash to that size then leaves it as it is.

    Args:
        size: output side.
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly.
        flip_probability: chance of a horizontal flip.
    """

    def __init__(
        self,
        size: int = 224,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_probability: float = 0.5,
    ) -> None:
        self.size = size
        self.scale = scale
        self.ratio = ratio
        self.flip_probability = flip_probability

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` of a random crop, as torchvision's ``RandomResizedCrop.get_params``."""
        area = width * height
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1]).item()
            aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
            crop_w = round(math.sqrt(target_area * aspect))
            crop_h = round(math.sqrt(target_area / aspect))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                top = int(torch.randint(0, height - crop_h + 1, size=(1,)).item())
                left = int(torch.randint(0, width - crop_w + 1, size=(1,)).item())
                return left, top, left + crop_w, top + crop_h
        # ten misses: the largest centred crop within the ratio range
        crop_w, crop_h = width, height
        if width / height < min(self.ratio):
            crop_h = round(width / min(self.ratio))
        elif width / height > max(self.ratio):
            crop_w = round(height * max(self.ratio))
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        return left, top, left + crop_w, top + crop_h

    def __call__(self, image: Image.Image) -> Image.Image:
        """A random crop of ``image``, resized (bicubic) to ``size x size`` and maybe mirrored."""
        cropped = image.crop(self.crop_box(*image.size))
        resized = cropped.resize((self.size, self.size), Image.Resampling.BICUBIC)
        if torch.rand(1).item() < self.flip_probability:
            return resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return resized

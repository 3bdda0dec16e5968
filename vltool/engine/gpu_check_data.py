"""What the GPU check (:mod:`vltool.engine.gpu_check`) trains on: random checkpoints and long conversations.

The check runs the shipped recipes unchanged except for where they load from, so it needs model
folders that ``from_pretrained`` reads like a Hub download: ``config.json``, safetensors shards
with their index, and the tokenizer or image processor files the recipes take from the same
folder. :func:`write_random_pretrained` writes such a folder with random values, tensor by
tensor, without ever building the model (a 7B-shaped LLM would need 30 GB for its fp32 init
alone). :func:`write_conversations` writes LLaVA JSON whose samples are long (LLaVA-Instruct's
detailed and many-turn samples run to 1-2k tokens), so packed batches look like real ones.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mmengine.logging import print_log
from safetensors.torch import save_file
from torch import nn
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from vltool.constants import IMAGE_TOKEN
from vltool.data.demo_task import draw_shape, is_written, random_attributes
from vltool.data.length_task import WORDS
from vltool.model.tokenizer import load_qwen2_tokenizer

SHARD_BYTES = 2 * 2**30
"""Largest safetensors shard written (Hub checkpoints use 2-5 GB)."""
STAMP = "vltool_random_weights.json"
"""Written last into a checkpoint or data folder: what it holds, so a rerun can reuse it."""


@dataclass(frozen=True)
class Folders:
    """Where the check writes its models, data and tokenised-data cache."""

    root: Path

    def llm(self, name: str) -> Path:
        return self.root / "models" / f"llm-{name}"

    @property
    def encoder(self) -> Path:
        return self.root / "models" / "encoder"

    @property
    def data(self) -> Path:
        return self.root / "data"


def _is_norm(module: nn.Module) -> bool:
    """LayerNorm and the RMSNorms of Hugging Face models (``Qwen2RMSNorm``), whose weights start at one."""
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def _initial_values(module: nn.Module, name: str) -> str:
    """How a parameter starts, as transformers initialises it: ``ones``, ``zeros`` or ``normal``."""
    if _is_norm(module):
        return "ones" if name == "weight" else "zeros"
    return "zeros" if name == "bias" else "normal"


def write_random_pretrained(
    model_class: type[PreTrainedModel],
    config: PretrainedConfig,
    folder: Path,
    dtype: torch.dtype,
    seed: int = 0,
    device: str | None = None,
) -> None:
    """Write a ``from_pretrained`` folder of ``model_class(config)`` holding random weights.

    Weights are drawn from ``N(0, config.initializer_range)`` (norms one, biases zero), one
    tensor at a time on ``device`` (the GPU when there is one: a 7B-shaped LLM then takes
    seconds, not minutes), and written shard by shard (at most :data:`SHARD_BYTES` each, so the
    host holds one shard at a time) with ``model.safetensors.index.json``, as Hub checkpoints
    are. Tied weights are written once. A folder already written with the same config, dtype
    and seed is left as it is (a rerun on the same machine skips the writing).

    Args:
        model_class: e.g. ``Qwen2ForCausalLM``, ``CLIPVisionModel``.
        config: its config; saved as ``config.json`` with ``dtype`` as the checkpoint's dtype
            (what ``from_pretrained`` loads in by default).
        folder: created if missing.
        dtype: the saved weights' dtype (Qwen2.5 checkpoints are bf16, CLIP's fp32).
        seed: the random values' seed.
        device: where values are drawn; default CUDA when available.
    """
    config.dtype = dtype
    stamp = {"config": config.to_dict(), "seed": seed}
    if is_written(folder / STAMP, json.loads(json.dumps(stamp, default=str))):
        return
    folder.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    with torch.device("meta"):  # names and shapes only: no memory, no init
        skeleton = model_class(config)
    modules = dict(skeleton.named_modules())
    shards: list[list[tuple[str, torch.Size, str]]] = [[]]
    shard_bytes = 0
    for full_name, param in skeleton.named_parameters():  # tied parameters appear once
        owner, _, name = full_name.rpartition(".")
        size = param.numel() * dtype.itemsize
        if shard_bytes and shard_bytes + size > SHARD_BYTES:
            shards.append([])
            shard_bytes = 0
        shards[-1].append((full_name, param.shape, _initial_values(modules[owner], name)))
        shard_bytes += size
    generator = torch.Generator(device).manual_seed(seed)
    std = getattr(config, "initializer_range", 0.02)
    weight_map, total = {}, 0
    for number, entries in enumerate(shards, start=1):
        file_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: _random(shape, kind, std, dtype, device, generator) for name, shape, kind in entries}
        save_file(tensors, str(folder / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file_name))
        total += sum(tensor.nbytes for tensor in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    config.save_pretrained(folder)
    (folder / STAMP).write_text(json.dumps(stamp, default=str))


def _random(
    shape: torch.Size, kind: str, std: float, dtype: torch.dtype, device: str, generator: torch.Generator
) -> torch.Tensor:
    """One weight as :func:`_initial_values` says it starts, drawn on ``device``, returned on the host."""
    value = torch.empty(shape, dtype=torch.float32, device=device)
    if kind == "normal":
        value.normal_(0.0, std, generator=generator)
    else:
        value.fill_(1.0 if kind == "ones" else 0.0)
    return value.to(dtype).cpu()


def _prose(rng: random.Random, words: int) -> str:
    """``words`` words of the demo's vocabulary as one sentence (each about one Qwen2 token)."""
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def _conversation(text_words: int, rng: random.Random) -> list[dict[str, str]]:
    """Several turns about one picture, about ``text_words`` words in all, most in the answers."""
    turns = rng.randint(2, 5)
    messages = []
    for turn in range(turns):
        question = _prose(rng, rng.randint(6, 16))
        messages.append({"from": "human", "value": f"{IMAGE_TOKEN}\n{question}" if turn == 0 else question})
        messages.append({"from": "gpt", "value": _prose(rng, max(1, text_words // turns))})
    return messages


def write_conversations(
    root: Path, num_samples: int, image_size: int, text_words: tuple[int, int], seed: int = 0
) -> Path:
    """Write ``root/train.json`` (LLaVA format) and its pictures: one picture and a long conversation per sample.

    Args:
        root: created if missing.
        num_samples: samples written.
        image_size: pictures' side in pixels (the encoder's input size: no resizing cost).
        text_words: the least and most words of text per sample; each sample draws its count
            uniformly, so packed rows hold samples of different lengths.
        seed: the generator's seed.

    Returns:
        The JSON file.
    """
    data_path = root / "train.json"
    settings = {"num_samples": num_samples, "image_size": image_size, "text_words": list(text_words), "seed": seed}
    if is_written(root / STAMP, settings):
        return data_path
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = []
    for index in range(num_samples):
        name = f"images/{index:06d}.png"
        draw_shape(size=image_size, rng=rng, **random_attributes(rng)).save(root / name)
        conversation = _conversation(rng.randint(*text_words), rng)
        records.append({"id": f"long-{index}", "image": name, "conversations": conversation})
    data_path.write_text(json.dumps(records))
    (root / STAMP).write_text(json.dumps(settings))
    print_log(f"wrote {num_samples} samples to {data_path}", logger="current")
    return data_path


def write_models(
    folders: Folders, shapes: dict[str, dict[str, Any]], encoder: dict[str, Any], dtype: torch.dtype
) -> None:
    """Random-weight model folders as the recipes read them.

    Each LLM folder also holds the tokenizer, the encoder folder its image processor: the recipes
    load both from the model folders they belong to.

    Args:
        folders: where they go.
        shapes: Qwen2Config keywords by LLM name (``0.5b``, ``7b``).
        encoder: CLIPVisionConfig keywords.
        dtype: the LLM checkpoints' dtype (the encoder's is fp32, as CLIP's is).
    """
    tokenizer = load_qwen2_tokenizer()
    for name, llm in shapes.items():
        write_random_pretrained(Qwen2ForCausalLM, Qwen2Config(**llm), folders.llm(name), dtype)
        tokenizer.save_pretrained(folders.llm(name))
    # the CLIP checkpoints are fp32; on CPU everything is fp32 (bf16 runs ~40x slower there)
    write_random_pretrained(CLIPVisionModel, CLIPVisionConfig(**encoder), folders.encoder, torch.float32)
    size = encoder["image_size"]
    processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor.save_pretrained(folders.encoder)

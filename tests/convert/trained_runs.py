"""Short in-process training runs whose live model is the reference a conversion must reproduce."""

from dataclasses import dataclass
from pathlib import Path

import torch
from mmengine.config import Config

from tests.engine.train_runs import write_colour_dataset
from vltool.engine.config import load_config
from vltool.engine.hooks import unwrap
from vltool.engine.runner import build_runner
from vltool.infer.pipeline import Pipeline
from vltool.model.builder import build_seeded_parts
from vltool.model.vlm import VisionLanguageModel
from vltool.templates.message import Message

ITERS = 2
QUESTION = "What colour is it?"


@dataclass
class TrainedRun:
    """A finished run: its dumped config, last checkpoint and the live model (the reference)."""

    config: Path
    checkpoint: Path
    model: VisionLanguageModel


def demo_config(data: Path, *options: str) -> Config:
    """The demo config on ``data`` for ``ITERS`` iterations of batch 4, checkpointing at the end."""
    return load_config(
        "demo",
        [
            f"train_dataloader.dataset.data_path={data}",
            f"train_dataloader.dataset.image_folder={data.parent}",
            f"train_cfg.max_iters={ITERS}",
            "train_dataloader.batch_size=4",
            "data_preparation=None",
            f"default_hooks.checkpoint.interval={ITERS}",
            "custom_hooks=[]",
            *options,
        ],
    )


def train(cfg: Config, work_dir: Path) -> TrainedRun:
    """Train in this process; the returned model is exactly what the checkpoint was saved from."""
    runner = build_runner(cfg, str(work_dir))
    runner.train()
    model = unwrap(runner.model).eval()
    return TrainedRun(work_dir / f"{Path(cfg.filename).stem}.py", work_dir / f"iter_{ITERS}.pth", model)


def lora(r: int = 4) -> dict:
    # types are dotted names, as in a config file, so mmengine can dump the config into the work dir;
    # random B so the adapters change outputs from the first step
    return dict(type="peft.LoraConfig", r=r, lora_alpha=2 * r, lora_dropout=0.0, init_lora_weights=False)


def saved_bases(root: Path) -> tuple[Path, Path]:
    """The demo's LLM and vision tower, saved as named bases for QLoRA runs to load."""
    parts = build_seeded_parts(load_config("demo", ["data_preparation=None"]))
    llm_dir, clip_dir = root / "qwen2", root / "clip"
    parts.model.llm.save_pretrained(llm_dir)
    parts.model.vision_encoder.model.save_pretrained(clip_dir)
    return llm_dir, clip_dir


def variant_config(kind: str, data: Path, bases: tuple[Path, Path] | None = None) -> Config:
    """The demo config turned into one kind of run: full, pretrain, lora, qlora or resampler."""
    cfg = demo_config(data)
    model = cfg.model
    if kind == "pretrain":  # projector only; the LLM and encoder stay at their seeded random init
        model.update(freeze_llm=True, freeze_vision_encoder=True, freeze_llm_input_embeddings=False)
    elif kind == "lora":
        model.update(freeze_llm=True, freeze_vision_encoder=True, llm_lora=lora(), vision_encoder_lora=lora())
    elif kind == "qlora":
        llm_dir, clip_dir = bases
        model.llm = dict(
            type="transformers.AutoModelForCausalLM.from_pretrained",
            pretrained_model_name_or_path=str(llm_dir),
        )
        model.llm_quantization = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4")
        model.vision_encoder.model = dict(
            type="transformers.CLIPVisionModel.from_pretrained", pretrained_model_name_or_path=str(clip_dir)
        )
        model.update(freeze_llm=True, freeze_vision_encoder=True, llm_lora=lora(), vision_encoder_lora=lora())
        model.pop("freeze_llm_input_embeddings")
    elif kind == "resampler":
        model.projector = dict(type="vltool.model.projectors.ResamplerProjector", num_queries=16, num_heads=4)
    return cfg


def write_data(root: Path) -> Path:
    return write_colour_dataset(root, samples=16)


def inputs(pipeline: Pipeline, image) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt ids, mask and pixels for QUESTION about ``image``, as vltool's inference path builds them."""
    input_ids, attention_mask = pipeline.encode([[Message("user", f"<image>\n{QUESTION}")]])
    return input_ids, attention_mask, pipeline.image_transform([image])


def assert_same_logits(reference, loaded, image, atol=1e-5):
    """The reloaded pipeline's model gives the live model's logits on the same prompt."""
    input_ids, attention_mask, pixels = inputs(loaded, image)
    with torch.no_grad():
        expected = reference(input_ids, attention_mask, pixels)
        actual = loaded.model(input_ids, attention_mask, pixels)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)

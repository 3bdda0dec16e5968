"""Qwen-VL's and BLIP-2's encoders through train, resume, ``convert pth_to_hf``, reload, chat and ``mmbench``.

Each encoder gets a tiny run of the demo config with the encoder swapped in (Qwen-VL: the
parity fixture at 448 px; BLIP-2: a random tiny composite saved with ``save_pretrained``),
trained 2 iterations, resumed to 4, converted in the vltool format and reloaded; the reloaded
model must give the live model's logits and the training transform's pixels.
"""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import Blip2Model

from tests.conftest import ASSETS
from tests.convert.trained_runs import TrainedRun, assert_same_logits, demo_config, inputs, train, write_data
from tests.engine.train_runs import logged_losses, vltool_command
from tests.eval.mmbench_files import colour_questions, write_tsv
from tests.model.test_blip2_encoder import tiny_blip2_config
from vltool.build import build
from vltool.convert.pth_to_hf import convert_checkpoint
from vltool.data.images import ImageTransform
from vltool.engine.config import load_config
from vltool.errors import ConfigError
from vltool.infer.load import load_pipeline
from vltool.infer.pipeline import GenerationOptions
from vltool.model import blip2_encoder, qwen_vl_weights
from vltool.model.blip2_encoder import Blip2VisionQFormer
from vltool.model.qwen_vl_weights import load_qwen_vl_visual, save_qwen_vl_visual
from vltool.model.visual_tokens import image_seq_length_from_config
from vltool.templates.message import Message

QWEN_VL_FIXTURE = ASSETS / "qwen-vl-visual"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
RESUMED_ITERS = 4
# what each encoder outputs per image, and the class names in the refusal and the manifest
ENCODERS = {
    "qwen_vl": dict(tokens=256, kind="qwen_vl_visual", cls="QwenVLVisualEncoder"),
    "blip2": dict(tokens=32, kind="blip2_qformer", cls="Blip2QFormerEncoder"),
}


def squash_processor(size: int) -> dict:
    """Both encoders' preprocessing: squash to ``size`` (bicubic, no crop), CLIP mean and std; dotted type for dumps."""
    return dict(
        type="transformers.CLIPImageProcessorPil",
        size=dict(height=size, width=size),
        resample=3,
        do_center_crop=False,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )


@pytest.fixture(scope="module")
def blip2_folder(module_tmp) -> Path:
    """A random tiny BLIP-2 composite, saved as a BLIP-2 checkpoint."""
    torch.manual_seed(0)
    model = Blip2Model(tiny_blip2_config())
    with torch.no_grad():
        model.query_tokens.normal_()  # zeros by default: all 32 outputs would be the same
    folder = module_tmp("blip2")
    model.save_pretrained(folder)
    return folder


def encoder_config(name: str, data: Path, blip2: Path, *options: str):
    """The demo config (batch 2, everything trains) with the encoder ``name`` and its preprocessing."""
    cfg = demo_config(data, "train_dataloader.batch_size=2", "train_dataloader.dataset.max_length=400", *options)
    # whole dicts: mmengine copies a dict on assignment
    if name == "qwen_vl":
        loader = dict(type="vltool.model.qwen_vl_weights.load_qwen_vl_visual")
        loader.update(pretrained_model_name_or_path=str(QWEN_VL_FIXTURE))
        cfg.model.vision_encoder = dict(type="vltool.model.qwen_vl_visual.QwenVLVisualEncoder", model=loader)
        cfg.image_processor = squash_processor(448)
    else:
        loader = dict(type="vltool.model.blip2_encoder.Blip2VisionQFormer.from_pretrained")
        loader.update(pretrained_model_name_or_path=str(blip2))
        cfg.model.vision_encoder = dict(type="vltool.model.blip2_encoder.Blip2QFormerEncoder", model=loader)
        cfg.image_processor = squash_processor(224)
    cfg.train_dataloader.dataset.image_aspect = "resize"
    return cfg


@pytest.fixture(scope="module", params=list(ENCODERS))
def resumed(request, blip2_folder, module_tmp) -> tuple[str, TrainedRun, Path]:
    """``(name, run, data)``: 2 iterations trained, then resumed in the same work dir to 4."""
    name = request.param
    root = module_tmp(name)
    data = write_data(root)
    work_dir = root / "work"
    train(encoder_config(name, data, blip2_folder), work_dir)
    assert (work_dir / "iter_2.pth").exists()
    options = (f"train_cfg.max_iters={RESUMED_ITERS}", "default_hooks.logger.interval=1", "resume=True")
    run = train(encoder_config(name, data, blip2_folder, *options), work_dir)
    run.checkpoint = work_dir / f"iter_{RESUMED_ITERS}.pth"
    return name, run, data


@pytest.fixture(scope="module")
def converted(resumed, module_tmp) -> Path:
    _, run, _ = resumed
    out = module_tmp("converted") / "model"
    convert_checkpoint(str(run.config), run.checkpoint, out, fp32=True)
    return out


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.new("RGB", (80, 60), "red")


@pytest.mark.slow
def test_resume_continues_from_the_checkpoint(resumed):
    _, run, _ = resumed
    work_dir = run.checkpoint.parent
    newest = sorted(work_dir.glob("*/vis_data/scalars.json"))[-1]
    steps = [json.loads(line)["step"] for line in newest.read_text().splitlines() if "loss" in line]
    assert steps == [3, 4]  # resumed at iteration 2: not trained from the start again
    assert set(logged_losses(work_dir)) >= {3, 4} and run.checkpoint.exists()


@pytest.mark.slow
def test_converted_model_reloads_with_equal_logits_and_pixels(resumed, converted, image):
    name, run, _ = resumed
    manifest = json.loads((converted / "vltool_model.json").read_text())
    assert manifest["vision_encoder"] == {"kind": ENCODERS[name]["kind"], "path": "vision_encoder"}
    assert manifest["image_seq_length"] == ENCODERS[name]["tokens"]
    loaded = load_pipeline(converted, dtype=torch.float32)
    assert type(loaded.model.vision_encoder).__name__ == ENCODERS[name]["cls"]
    cfg = load_config(str(run.config), ["data_preparation=None"])
    trained_transform = ImageTransform(build(cfg.image_processor), "resize")
    torch.testing.assert_close(inputs(loaded, image)[2], trained_transform([image]), atol=0, rtol=0)
    assert_same_logits(run.model, loaded, image)
    question = [[Message("user", "<image>\nWhat colour is it?")]]
    (answer,) = loaded.answer(question, [[image]], GenerationOptions(max_new_tokens=3))
    assert isinstance(answer, str)


@pytest.mark.slow
def test_mmbench_runs_on_the_converted_model(converted, tmp_path):
    tsv = write_tsv(tmp_path / "colours.tsv", colour_questions()[:2])
    args = ["mmbench", str(converted), "--data-path", str(tsv), "--work-dir", str(tmp_path / "eval")]
    result = subprocess.run(
        vltool_command(*args, "--max-new-tokens", "2", "--batch-size", "2"), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "eval").glob("*_acc.csv"))


@pytest.mark.slow
def test_huggingface_format_is_refused_before_loading(resumed, tmp_path):
    name, run, _ = resumed
    cls = ENCODERS[name]["cls"]
    with pytest.raises(ConfigError, match=f"holds CLIP or SigLIP encoders, not {cls}.*--save-format vltool"):
        convert_checkpoint(str(run.config), run.checkpoint, tmp_path / "hf", save_format="huggingface")
    assert not (tmp_path / "hf").exists()
    if name == "blip2":  # the CLI's one line, once
        command = vltool_command(
            "convert",
            "pth_to_hf",
            str(run.config),
            str(run.checkpoint),
            str(tmp_path / "cli"),
            "--save-format",
            "huggingface",
        )
        result = subprocess.run(command, capture_output=True, text=True)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 1 and len(errors) == 1 and cls in errors[0], result.stderr[-2000:]


@pytest.mark.slow
def test_bfloat16_load_keeps_the_qformer_fp32(resumed, converted, image):
    kind, _, _ = resumed
    loaded = load_pipeline(converted, dtype=torch.bfloat16)
    encoder = loaded.model.vision_encoder
    dtypes = {name.split(".")[1]: set() for name, _ in encoder.named_parameters()}
    for name, param in encoder.named_parameters():
        dtypes[name.split(".")[1]].add(param.dtype)
    # Qwen-VL's tower goes bf16 whole; BLIP-2's Q-Former and query tokens stay fp32 (its ViT goes bf16)
    fp32 = {"qformer", "query_tokens"} if kind == "blip2" else set()
    assert fp32 <= set(dtypes) and dtypes == {
        part: {torch.float32 if part in fp32 else torch.bfloat16} for part in dtypes
    }
    input_ids, attention_mask, pixels = inputs(loaded, image)
    with torch.no_grad():
        logits = loaded.model(input_ids, attention_mask, pixels)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


@pytest.mark.slow
def test_check_dataset_counts_tokens_without_reading_weights(resumed, monkeypatch):
    name, run, _ = resumed

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were read")

    monkeypatch.setattr(qwen_vl_weights, "read_visual_tensors", no_weights)
    monkeypatch.setattr(blip2_encoder, "read_encoder_tensors", no_weights)
    model_cfg = load_config(str(run.config), ["data_preparation=None"]).model
    assert image_seq_length_from_config(model_cfg) == ENCODERS[name]["tokens"]


# ---- the folder layouts alone: fast


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qwen_vl_tower_saves_and_loads_back_exactly(tmp_path, dtype):
    tower = load_qwen_vl_visual(str(QWEN_VL_FIXTURE), torch.float32)
    save_qwen_vl_visual(tower, tmp_path / "tower", dtype, max_shard_size="200KB")  # several shards + index
    assert (tmp_path / "tower" / "model.safetensors.index.json").is_file()
    reloaded = load_qwen_vl_visual(str(tmp_path / "tower"))
    assert reloaded.visual_config == tower.visual_config
    expected = {name: value.to(dtype) for name, value in tower.state_dict().items()}
    torch.testing.assert_close(reloaded.state_dict(), expected, atol=0, rtol=0)


def test_blip2_encoder_saves_and_loads_back_with_an_fp32_qformer(blip2_folder, tmp_path):
    model = Blip2VisionQFormer.from_pretrained(str(blip2_folder))
    model.save_pretrained(tmp_path / "encoder", torch.bfloat16)
    reloaded = Blip2VisionQFormer.from_pretrained(str(tmp_path / "encoder"))
    for name, value in reloaded.state_dict().items():
        dtype = torch.bfloat16 if name.startswith("vision_model.") else torch.float32
        torch.testing.assert_close(value, model.state_dict()[name].to(dtype), atol=0, rtol=0)

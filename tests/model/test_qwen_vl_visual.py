"""Qwen-VL's visual encoder: parity with the original ``visual.py``, shard-selective loading, LoRA, a tiny VLM."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ASSETS, tiny_qwen2_config
from mmengine.config import Config
from peft import LoraConfig
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import Qwen2ForCausalLM

from vltool.build import build
from vltool.constants import IGNORE_INDEX
from vltool.errors import ConfigError
from vltool.model.builder import build_model
from vltool.model.lora import add_lora
from vltool.model.projectors import MLPProjector
from vltool.model.qwen_vl_visual import QwenVLVisionTransformer, QwenVLVisualConfig, QwenVLVisualEncoder
from vltool.model.qwen_vl_weights import PREFIX, load_qwen_vl_visual, visual_shards
from vltool.model.tokenizer import add_image_token
from vltool.model.vlm import VisionLanguageModel

RESULT = "RESULT "
FIXTURE = ASSETS / "qwen-vl-visual"
BASE_CONFIG = Path(__file__).parents[2] / "vltool/configs/_base_/encoders/qwen_vl_visual.py"
IMAGE_ID = 151646
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def original() -> dict[str, torch.Tensor]:
    """``pixel_values`` [1, 3, 448, 448] and the original module's ``image_features`` [1, 256, 256]."""
    return load_file(FIXTURE / "io.safetensors")


@pytest.fixture(scope="module")
def checkpoint_tensors() -> dict[str, torch.Tensor]:
    """The fixture's ``transformer.visual.*`` tensors, as a Qwen-VL-Chat checkpoint names them."""
    return load_file(FIXTURE / "visual.safetensors")


def encode(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(pixel_values)


def write_checkpoint(folder: Path, shards: dict[str, dict[str, torch.Tensor]], index: bool = True) -> Path:
    """A Qwen-VL-style folder: ``config.json`` with the fixture's ``visual`` block, the shards, their index."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text((FIXTURE / "config.json").read_text())
    for name, tensors in shards.items():
        if name.endswith(".safetensors"):
            save_file(tensors, folder / name)
        else:
            torch.save(tensors, folder / name)
    if index:
        weight_map = {key: name for name, tensors in shards.items() for key in tensors}
        index_name = "model.safetensors.index.json" if name.endswith(".safetensors") else "pytorch_model.bin.index.json"
        (folder / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def test_output_equals_the_original(original):
    model = load_qwen_vl_visual(str(FIXTURE))  # no index: the safetensors files holding visual tensors
    features = encode(QwenVLVisualEncoder(model), original["pixel_values"])
    difference = (features - original["image_features"]).abs().max().item()
    print(f"max abs difference to the original visual.py: {difference:.2e}")
    assert features.shape == (1, 256, 256) and difference < 1e-5


def test_encoder_interface_and_dtype():
    encoder = QwenVLVisualEncoder(load_qwen_vl_visual(str(FIXTURE), dtype="bfloat16"))
    assert (encoder.image_size, encoder.hidden_size, encoder.num_patches) == (448, 256, 256)
    assert {tensor.dtype for tensor in encoder.state_dict().values()} == {torch.bfloat16}


def test_real_geometry_is_qwen_vl_chats_594_tensors():
    with torch.device("meta"):
        state = QwenVLVisionTransformer(QwenVLVisualConfig()).state_dict()
    assert len(state) == 594
    assert state["positional_embedding"].shape == (256, 1664)  # a 16x16 table, resized to 32x32
    assert state["transformer.resblocks.47.mlp.c_fc.weight"].shape == (8192, 1664)
    assert state["attn_pool.kv_proj.weight"].shape == (4096, 1664)
    assert state["attn_pool.attn.in_proj_weight"].shape == (3 * 4096, 4096)
    assert state["proj"].shape == (4096, 4096)


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_reads_only_the_shards_holding_visual_weights(tmp_path, checkpoint_tensors, original, suffix):
    names = sorted(checkpoint_tensors)
    half = len(names) // 2
    fake_llm = {"transformer.h.0.attn.c_attn.weight": torch.randn(8, 8), "lm_head.weight": torch.randn(4, 8)}
    shards = {
        f"model-00001-of-00003{suffix}": fake_llm,  # the LLM alone: must never be opened
        f"model-00002-of-00003{suffix}": {"transformer.ln_f.weight": torch.ones(8)}
        | {name: checkpoint_tensors[name] for name in names[:half]},
        f"model-00003-of-00003{suffix}": {name: checkpoint_tensors[name] for name in names[half:]},
    }
    folder = write_checkpoint(tmp_path / "qwen-vl-chat", shards)
    llm_shard = folder / f"model-00001-of-00003{suffix}"
    llm_shard.write_bytes(b"not a weights file" * 100)  # any read of it fails

    assert visual_shards(folder) == [folder / name for name in sorted(shards)[1:]]
    features = encode(load_qwen_vl_visual(str(folder)), original["pixel_values"])
    torch.testing.assert_close(features, original["image_features"], atol=1e-5, rtol=0)

    # had the index named the garbage shard, the load would have failed, in one line naming it
    index = next(folder.glob("*.index.json"))
    weight_map = json.loads(index.read_text())["weight_map"]
    weight_map[names[0]] = llm_shard.name
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ConfigError, match="cannot read weights") as error:
        load_qwen_vl_visual(str(folder))
    assert str(llm_shard) in str(error.value) and "\n" not in str(error.value)


def test_missing_or_misshapen_tensor_is_a_one_line_config_error(tmp_path, checkpoint_tensors):
    missing = {name: value for name, value in checkpoint_tensors.items() if name != f"{PREFIX}attn_pool.query"}
    folder = write_checkpoint(tmp_path / "missing", {"model.safetensors": missing}, index=False)
    with pytest.raises(ConfigError, match=f"no {PREFIX}attn_pool.query") as error:
        load_qwen_vl_visual(str(folder))
    assert str(folder) in str(error.value) and "\n" not in str(error.value)

    misshapen = {**checkpoint_tensors, f"{PREFIX}proj": torch.zeros(256, 128)}
    folder = write_checkpoint(tmp_path / "misshapen", {"pytorch_model.bin": misshapen})
    with pytest.raises(ConfigError, match=r"proj has shape \[256, 128\]") as error:
        load_qwen_vl_visual(str(folder))
    assert str(folder / "pytorch_model.bin") in str(error.value) and "\n" not in str(error.value)


def test_a_hub_name_is_not_downloaded():
    with pytest.raises(ConfigError, match="download it first"):
        load_qwen_vl_visual("Qwen/Qwen-VL-Chat")


def test_lora_on_the_encoder_uses_every_adapter(original):
    encoder = QwenVLVisualEncoder(load_qwen_vl_visual(str(FIXTURE)))
    before = encode(encoder, original["pixel_values"])
    # PEFT's all-linear (vltool's default): ViT in/out/c_fc/c_proj, the resampler's kv_proj and out_proj
    encoder.model = add_lora(encoder.model, LoraConfig(r=4, lora_alpha=8))
    torch.testing.assert_close(encode(encoder, original["pixel_values"]), before, atol=0, rtol=0)

    with torch.no_grad():  # non-zero B matrices, so that every adapter changes the output
        for name, param in encoder.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)
    encoder.train()
    encoder(original["pixel_values"]).square().mean().backward()
    lora = {name: param for name, param in encoder.model.named_parameters() if ".lora_" in name}
    assert len(lora) == 2 * (2 * 4 + 2)  # A and B on 4 linears per block, kv_proj and the pool's out_proj
    assert all(param.grad is not None and param.grad.abs().sum() > 0 for param in lora.values())
    assert all(param.grad is None for name, param in encoder.model.named_parameters() if name not in lora)


def test_gradient_checkpointing_gives_the_same_gradients(original):
    grads = []
    for checkpointing in (False, True):
        model = load_qwen_vl_visual(str(FIXTURE)).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(original["pixel_values"]).square().mean().backward()
        grads.append(model.conv1.weight.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_base_config_squashes_images_as_qwen_vl_does():
    cfg = Config.fromfile(BASE_CONFIG)
    assert cfg.vision_encoder.model.pretrained_model_name_or_path == "Qwen/Qwen-VL-Chat"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8))
    pixel_values = build(cfg.image_processor)(image, return_tensors="pt")["pixel_values"]
    # the original's torchvision Resize((448, 448), BICUBIC) on a PIL image is PIL's own resize
    squashed = np.asarray(image.resize((448, 448), Image.Resampling.BICUBIC), dtype=np.float64) / 255
    expected = torch.from_numpy(((squashed - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)).float()
    torch.testing.assert_close(pixel_values[0], expected, atol=1e-5, rtol=0)


def test_tiny_vlm_with_the_encoder_trains(tokenizer, original):
    cfg = dict(
        vision_encoder=dict(
            type=QwenVLVisualEncoder,
            model=dict(type=load_qwen_vl_visual, pretrained_model_name_or_path=str(FIXTURE)),
        ),
        projector=dict(type=MLPProjector, depth=2),  # Zero-Qwen-VL's: Linear(output_dim -> llm), GELU, Linear
        llm=dict(type=Qwen2ForCausalLM, config=tiny_qwen2_config()),
    )
    torch.manual_seed(0)
    vlm = build_model(cfg, tokenizer)  # encoder frozen, projector trains, LLM frozen
    assert vlm.image_seq_length == 256 and vlm.projector.linear_1.in_features == 256
    encoder_before = {name: value.clone() for name, value in vlm.vision_encoder.state_dict().items()}
    projector_before = vlm.projector.linear_1.weight.clone()

    input_ids = torch.tensor([[151644] + [IMAGE_ID] * 256 + [1000, 1001, 1002] * 4] * 2)
    labels = input_ids.clone()
    labels[:, :257] = IGNORE_INDEX
    pixel_values = original["pixel_values"].repeat(2, 1, 1, 1)
    optimizer = torch.optim.AdamW([param for param in vlm.parameters() if param.requires_grad], lr=1e-3)
    vlm.train()
    for _ in range(2):
        loss = vlm.loss(input_ids=input_ids, labels=labels, pixel_values=pixel_values)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        assert torch.isfinite(loss)
    assert not torch.equal(vlm.projector.linear_1.weight, projector_before)
    assert all(torch.equal(value, encoder_before[name]) for name, value in vlm.vision_encoder.state_dict().items())


def zero3_rank() -> None:
    """One gloo rank: load under vltool's ZeRO-3 build context, add LoRA, run a DeepSpeed step; print RESULT."""
    import deepspeed

    from vltool.engine.deepspeed import zero3_build_context

    deepspeed.init_distributed(dist_backend="gloo")
    ds_config = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": 3},
    }
    with zero3_build_context(ds_config):
        encoder = QwenVLVisualEncoder(load_qwen_vl_visual(str(FIXTURE)))
    partitioned = all(hasattr(param, "ds_id") for param in encoder.parameters())
    encoder.model = add_lora(encoder.model, LoraConfig(r=4))
    trainable = [param for param in encoder.parameters() if param.requires_grad]
    engine, *_ = deepspeed.initialize(model=encoder, optimizer=torch.optim.AdamW(trainable), config=ds_config)
    io = load_file(FIXTURE / "io.safetensors")
    features = engine(io["pixel_values"])
    engine.backward(features.square().mean())
    engine.step()
    difference = (features.detach() - io["image_features"]).abs().max().item()
    print(RESULT + json.dumps({"partitioned": partitioned, "difference": difference}), flush=True)


def test_zero3_loads_into_partitions_and_trains_lora():
    """Two gloo ranks: no ``assert query is key`` to trip over, weights copied into ZeRO-3 partitions."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = Path(__file__).parents[2]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "tests"), env.get("PYTHONPATH", "")])
    ranks = [
        subprocess.Popen(
            [sys.executable, __file__],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=root,
        )
        for rank in range(2)
    ]
    outputs = [rank.communicate(timeout=300)[0] for rank in ranks]
    for rank, output in zip(ranks, outputs, strict=True):
        assert rank.returncode == 0, output[-4000:]
        result = json.loads(next(line for line in output.splitlines() if line.startswith(RESULT))[len(RESULT) :])
        assert result["partitioned"] and result["difference"] < 1e-5


if __name__ == "__main__":
    zero3_rank()


def test_fix_vit_trains_the_resampler_only(tokenizer):
    """Qwen-VL's fix_vit: the ViT frozen, its attention-pool resampler trains (``model.train_vision_modules``)."""
    block = json.loads((FIXTURE / "config.json").read_text())
    block = block.get("visual", block)
    vlm = VisionLanguageModel(
        QwenVLVisualEncoder(QwenVLVisionTransformer(QwenVLVisualConfig.from_dict(block))),
        MLPProjector(block["output_dim"], 64, depth=2),
        Qwen2ForCausalLM(tiny_qwen2_config()),
        image_token_id=add_image_token(tokenizer),
        freeze_vision_encoder=True,
        train_vision_modules=["model.attn_pool"],
    )
    trained = {name.split(".")[1] for name, p in vlm.vision_encoder.named_parameters() if p.requires_grad}
    assert trained == {"attn_pool"}
    with pytest.raises(ConfigError, match="no submodule 'model.pool'"):
        VisionLanguageModel(vlm.vision_encoder, vlm.projector, vlm.llm, 1, train_vision_modules=["model.pool"])

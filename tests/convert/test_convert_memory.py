"""A conversion needs about its output's size in memory, not the checkpoint's on top (docs/benchmarks.md, "Convert")."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.train_runs import vltool_command
from vltool.convert.pth_to_hf import convert_checkpoint
from vltool.engine.config import load_config
from vltool.engine.model import TrainingModel
from vltool.model.builder import build_seeded_parts

COPY_WINDOW = 64 * 2**20  # vltool.engine.lazy_weights.CHUNK_BYTES: what a copy holds of the checkpoint
# an LLM large enough (245M parameters: 0.98 GB of fp32 checkpoint) that holding the checkpoint shows
LLM = dict(hidden_size=768, intermediate_size=1536, num_hidden_layers=2, tie_word_embeddings=False)
# the peak of a process that has imported what a conversion imports: what the conversion adds is measured above it
IMPORTS = "import vltool.cli.app, vltool.convert.pth_to_hf, vltool.engine.checkpoint, transformers.models.clip"
# runs a command as the only child of a small process, so RUSAGE_CHILDREN is that command's own peak (a child
# forked from this test process would start its count from this process's size)
MEASURE = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


@pytest.fixture(scope="module")
def full_finetune(module_tmp):
    """A recipe-like run: LLM (bf16, as Qwen2.5 is stored) and CLIP (fp32) loaded by name; LLM and projector trained."""
    root = module_tmp("full_finetune")
    options = [f"model.llm.config.{key}={value}" for key, value in LLM.items()]
    options += ["data_preparation=None", "model.freeze_vision_encoder=True", "model.freeze_llm_input_embeddings=False"]
    cfg = load_config("demo", options)
    model = TrainingModel(build_seeded_parts(cfg).model)
    model.vlm.llm.to(torch.bfloat16).save_pretrained(root / "llm")
    model.vlm.vision_encoder.model.save_pretrained(root / "clip")
    cfg.model.llm = dict(
        type="transformers.AutoModelForCausalLM.from_pretrained", pretrained_model_name_or_path=str(root / "llm")
    )
    cfg.model.vision_encoder.model = dict(
        type="transformers.CLIPVisionModel.from_pretrained", pretrained_model_name_or_path=str(root / "clip")
    )
    cfg.dump(str(root / "finetune.py"))
    # trained weights are fp32 masters, most of them between two bf16 numbers
    weights = {name: value.float() * (1 + 2**-12) for name, value in model.state_dict().items()}
    torch.save({"meta": {}, "state_dict": weights}, root / "iter_1.pth")
    return root


def peak_kb(*command: str) -> int:
    result = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return int(result.stdout.split()[-1])


def test_converting_adds_about_the_output_not_the_checkpoint(full_finetune, tmp_path):
    baseline = peak_kb(sys.executable, "-c", IMPORTS)
    config, checkpoint = full_finetune / "finetune.py", full_finetune / "iter_1.pth"
    peak = peak_kb(*vltool_command("convert", "pth_to_hf", str(config), str(checkpoint), str(tmp_path / "model")))
    added = (peak - baseline) * 1024
    output = sum(file.stat().st_size for file in (tmp_path / "model").rglob("*") if file.is_file())
    # before: the model plus the checkpoint read whole (0.98 GB more); now the bf16 model and one copy window
    assert added < 1.3 * output + COPY_WINDOW, (added, output, checkpoint.stat().st_size)


def test_a_float32_export_keeps_the_float32_masters(full_finetune, tmp_path):
    # the LLM is stored in bf16: loaded as it is stored, its parameters would round what the checkpoint holds
    config, checkpoint = full_finetune / "finetune.py", full_finetune / "iter_1.pth"
    convert_checkpoint(str(config), checkpoint, tmp_path / "model", fp32=True)
    saved = load_file(tmp_path / "model" / "llm" / "model.safetensors")
    trained = torch.load(checkpoint, weights_only=True)["state_dict"]
    for name in ("model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "lm_head.weight"):
        assert torch.equal(saved[name], trained[f"vlm.llm.{name}"]), name

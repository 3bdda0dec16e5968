"""``vltool convert pth_to_hf``: every checkpoint kind, both formats, reloaded and compared with the live model."""

import json
import shutil
import subprocess

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, CLIPVisionModel

from tests.convert.trained_runs import assert_same_logits
from tests.engine.train_runs import vltool_command
from vltool.convert.pth_to_hf import convert_checkpoint
from vltool.errors import ConfigError
from vltool.infer.load import load_pipeline


@pytest.mark.parametrize("kind", ["full", "pretrain", "lora", "resampler"])
def test_vltool_format_round_trip(runs, kind, image, tmp_path):
    run = runs(kind)
    written = convert_checkpoint(str(run.config), run.checkpoint, tmp_path / "model", fp32=True)
    assert written["adapters"] == []  # LoRA without quantisation merges into llm/ and vision_encoder/
    manifest = json.loads((tmp_path / "model" / "vltool_model.json").read_text())
    assert manifest["llm"] == {"path": "llm"} and manifest["vision_encoder"]["path"] == "vision_encoder"
    assert manifest["template"]["name"] == "qwen_chat" and manifest["image_seq_length"] == run.model.image_seq_length
    loaded = load_pipeline(tmp_path / "model", dtype=torch.float32)
    assert type(loaded.model.projector) is type(run.model.projector)
    assert_same_logits(run.model, loaded, image)


def test_default_dtype_is_bfloat16(runs, tmp_path):
    run = runs("pretrain")
    convert_checkpoint(str(run.config), run.checkpoint, tmp_path / "model")
    projector = load_file(tmp_path / "model" / "projector" / "model.safetensors")
    assert {value.dtype for value in projector.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "model" / "llm" / "config.json").read_text())["dtype"] == "bfloat16"


def test_qlora_keeps_adapters_on_named_bases(runs, bases, image, tmp_path):
    run = runs("qlora")
    written = convert_checkpoint(str(run.config), run.checkpoint, tmp_path / "model", fp32=True)
    assert written["adapters"] == ["llm", "vision_encoder"]
    manifest = json.loads((tmp_path / "model" / "vltool_model.json").read_text())
    assert manifest["llm"]["base"] == str(bases[0]) and manifest["llm"]["quantization"]["load_in_4bit"] is True
    assert manifest["vision_encoder"]["base"] == str(bases[1])
    assert manifest["vision_encoder"]["class"] == "CLIPVisionModel"
    assert not (tmp_path / "model" / "llm").exists() and (tmp_path / "model" / "llm_adapter").is_dir()
    loaded = load_pipeline(tmp_path / "model", dtype=torch.float32)
    assert type(loaded.model.llm.base_model.model.model.layers[0].mlp.up_proj.base_layer).__name__ == "Linear4bit"
    assert_same_logits(run.model, loaded, image)
    # the adapters are PEFT's own: plain peft puts them on the named bases
    vision = PeftModel.from_pretrained(
        CLIPVisionModel.from_pretrained(bases[1]), tmp_path / "model" / "vision_encoder_adapter"
    )
    torch.testing.assert_close(
        vision.merge_and_unload().state_dict(), loaded.model.vision_encoder.model.merge_and_unload().state_dict()
    )


def test_sharded_save_loads_back(runs, image, tmp_path):
    run = runs("full")
    convert_checkpoint(str(run.config), run.checkpoint, tmp_path / "model", fp32=True, max_shard_size="20MB")
    index = json.loads((tmp_path / "model" / "llm" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 3 and all((tmp_path / "model" / "llm" / shard).is_file() for shard in shards)
    assert_same_logits(run.model, load_pipeline(tmp_path / "model", dtype=torch.float32), image)
    llm = AutoModelForCausalLM.from_pretrained(tmp_path / "model" / "llm")
    torch.testing.assert_close(llm.lm_head.weight, run.model.llm.lm_head.weight, atol=0, rtol=0)


def test_checkpoint_from_another_config_names_the_keys(runs, tmp_path):
    lora_run, full_run = runs("lora"), runs("full")
    with pytest.raises(ConfigError, match=r"does not match config .*lora_A") as err:
        convert_checkpoint(str(full_run.config), lora_run.checkpoint, tmp_path / "a")
    assert "convert with the config it was trained with" in str(err.value)
    # a projector-only pretrain checkpoint with the finetune config that also trains the LLM
    with pytest.raises(ConfigError, match=r"\d+ trained parameters are missing \(vision_encoder\.model\."):
        convert_checkpoint(str(full_run.config), runs("pretrain").checkpoint, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_non_empty_save_dir_is_refused_unless_overwrite(runs, tmp_path):
    run = runs("pretrain")
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("earlier export")
    with pytest.raises(ConfigError, match="exists and is not empty; choose another directory or pass --overwrite"):
        convert_checkpoint(str(run.config), run.checkpoint, target)
    assert (target / "keep.txt").read_text() == "earlier export"
    convert_checkpoint(str(run.config), run.checkpoint, target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "vltool_model.json").is_file()


def test_cli_converts_and_reports_errors_in_one_line(runs, tmp_path):
    run = runs("pretrain")
    ok = subprocess.run(
        vltool_command("convert", "pth_to_hf", str(run.config), str(run.checkpoint), str(tmp_path / "m")),
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert f"saved vltool model to {tmp_path / 'm'}" in ok.stdout
    cases = {
        "missing": ([str(tmp_path / "nope.pth")], "does not exist"),
        "adapters": ([str(run.checkpoint.parent), "--max-shard-size", "lots"], "--max-shard-size 'lots' is not a size"),
        "format": ([str(run.checkpoint), "--save-format", "gguf"], "unknown --save-format 'gguf'"),
    }
    for name, (args, message) in cases.items():
        result = subprocess.run(
            vltool_command("convert", "pth_to_hf", str(run.config), args[0], str(tmp_path / name), *args[1:]),
            capture_output=True,
            text=True,
        )
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 1 and len(errors) == 1 and message in errors[0], (name, result.stderr[-1500:])
        assert "Traceback" not in result.stderr


def test_adapter_folder_as_checkpoint_says_what_to_pass(runs, tmp_path):
    run = runs("pretrain")
    (tmp_path / "adapters" / "llm_adapter").mkdir(parents=True)
    with pytest.raises(ConfigError, match="is an adapter folder.*iter_N.pth.*vltool convert merge"):
        convert_checkpoint(str(run.config), tmp_path / "adapters", tmp_path / "out")


def test_loading_names_what_a_model_directory_lacks(runs, tmp_path):
    run = runs("pretrain")
    convert_checkpoint(str(run.config), run.checkpoint, tmp_path / "model")
    shutil.rmtree(tmp_path / "model" / "projector")
    with pytest.raises(ConfigError, match=r"model is missing projector; convert the checkpoint again"):
        load_pipeline(tmp_path / "model")
    with pytest.raises(ConfigError, match="is not a model directory from `vltool convert pth_to_hf`"):
        load_pipeline(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_pipeline(tmp_path / "nowhere")

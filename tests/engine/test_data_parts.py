"""The data parts come from configs alone: the same visual-token count and tokenizer as the built model, no weights.

The 7B recipes run through the real check-dataset and prepare-dataset commands against local
folders holding only config and tokenizer files, with the Hub offline: had anything tried to
load weights, the commands would fail.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ASSETS, TINY_QWEN2, TINY_VISION, tiny_image_processor, tiny_qwen2_config
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipConfig,
    SiglipImageProcessor,
)

from vltool.engine.config import copy_config, load_config
from vltool.engine.data_parts import build_data_parts, prepare_data
from vltool.errors import ConfigError
from vltool.model.builder import build_parts
from vltool.model.tokenizer import load_qwen2_tokenizer

HEAVY = ["deepspeed", "bitsandbytes", "peft"]
PATH = "pretrained_model_name_or_path"
TINY_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
TINY_TEXT = dict(TINY_TOWER, vocab_size=49408)  # the text half of a full CLIP/SigLIP folder, never read here


@pytest.mark.parametrize("name", ["demo", "demo_lengths"])
def test_demos_match_the_built_model(name):
    cfg = load_config(name, ["data_preparation=None"])
    data, parts = build_data_parts(cfg), build_parts(cfg)
    assert data.image_seq_length == parts.model.image_seq_length == 64
    # the tokenizer (and so the dataset cache key) is the one training builds
    assert data.tokenizer.get_vocab() == parts.tokenizer.get_vocab()
    assert data.template == parts.template


def test_data_preparation_runs_only_for_data_the_run_reads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo_root = tmp_path / "data" / "vltool_demo"
    small = ["data_preparation.num_train=4", "data_preparation.num_eval=4"]
    other = ["train_dataloader.dataset.data_path=mine/d.json", "train_dataloader.dataset.image_folder=mine"]
    cfg = load_config("demo", [*small, *other])
    prepare_data(cfg, with_hooks=False)  # check-dataset, prepare-dataset: only the training set is read
    assert not demo_root.exists()
    prepare_data(cfg)  # training: the demo's held-out questions and sample images are still read
    assert (demo_root / "dev.tsv").is_file()
    shutil.rmtree(demo_root)
    prepare_data(load_config("demo", small), with_hooks=False)  # the demo's own dataset
    assert (demo_root / "train.json").is_file()
    absolute = [f"train_dataloader.dataset.data_path={demo_root / 'train.json'}"]
    shutil.rmtree(demo_root)
    prepare_data(load_config("demo", [*small, *absolute]), with_hooks=False)  # the same folder, written absolute
    assert (demo_root / "train.json").is_file()


def tiny_recipe(name: str):
    """A shipped recipe with its Hub checkpoints swapped for tiny random configs of the same classes."""
    cfg = load_config(name)
    cfg.model.vision_encoder.model = dict(type=CLIPVisionModel, config=CLIPVisionConfig(image_size=32, **TINY_VISION))
    cfg.image_processor = tiny_image_processor(32)
    if cfg.model.vision_encoder.get("image_size"):
        cfg.model.vision_encoder.image_size = 48  # above the native size, as the Qwen-VL recipe runs
        cfg.image_processor = tiny_image_processor(48)
    cfg.model.llm = dict(type=Qwen2ForCausalLM, config=dict(type=Qwen2Config, **TINY_QWEN2))
    cfg.tokenizer = dict(type=load_qwen2_tokenizer)
    return cfg


@pytest.mark.parametrize(
    ("name", "tokens"),
    [("qwen2_5_7b_clip_l14_448_resampler_finetune", 256), ("qwen2_5_7b_clip_l14_336_linear_finetune", 16)],
)
def test_recipes_match_the_built_model(name, tokens):
    cfg = tiny_recipe(name)
    assert build_data_parts(cfg).image_seq_length == build_parts(cfg).model.image_seq_length == tokens


def write_llm_folder(folder: Path) -> Path:
    """A Qwen2 folder as the Hub has one, less the weights: config.json and the tokenizer files."""
    folder.mkdir()
    tiny_qwen2_config().save_pretrained(folder)
    load_qwen2_tokenizer().save_pretrained(folder)
    return folder


def write_clip_folder(folder: Path) -> Path:
    """A full CLIP ViT-L/14-336 folder's shapes (vision and text config in one file), tiny widths, no weights."""
    folder.mkdir()
    vision = dict(TINY_TOWER, image_size=336, patch_size=14)
    CLIPConfig(vision_config=vision, text_config=TINY_TEXT).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(folder)
    return folder


def write_siglip_folder(folder: Path) -> Path:
    folder.mkdir()
    SiglipConfig(vision_config=dict(TINY_TOWER, image_size=384, patch_size=14), text_config=TINY_TEXT).save_pretrained(
        folder
    )
    SiglipImageProcessor(size={"height": 384, "width": 384}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(module_tmp):
    root = module_tmp("checkpoints")
    return {
        "llm": write_llm_folder(root / "llm"),
        "clip": write_clip_folder(root / "clip"),
        "siglip": write_siglip_folder(root / "siglip"),
    }


def local_options(llm: Path, encoder: Path) -> list[str]:
    """--cfg-options pointing a shipped recipe's four from_pretrained entries at local folders."""
    return [
        f"model.llm.{PATH}={llm}",
        f"tokenizer.{PATH}={llm}",
        f"model.vision_encoder.model.{PATH}={encoder}",
        f"image_processor.{PATH}={encoder}",
    ]


@pytest.mark.parametrize(
    ("name", "encoder", "tokens"),
    [
        ("qwen2_5_7b_clip_l14_336_qlora_finetune", "clip", 576),  # (336 / 14)^2 patches, MLP keeps them
        ("qwen2_5_7b_clip_l14_448_resampler_finetune", "clip", 256),  # 1024 patches at 448 px -> 256 queries
        ("qwen2_5_7b_clip_l14_336_linear_finetune", "clip", 576),
        ("qwen2_5_0_5b_siglip_so400m_p14_384_pretrain", "siglip", 729),  # (384 / 14)^2, no CLS to drop
    ],
)
def test_from_pretrained_recipes_read_configs_only(folders, name, encoder, tokens):
    parts = build_data_parts(load_config(name, local_options(folders["llm"], folders[encoder])))
    assert parts.image_seq_length == tokens
    assert parts.tokenizer.convert_tokens_to_ids("<image>") == len(parts.tokenizer) - 1


def test_copied_config_names_types_as_strings(folders, tmp_path):
    copied = copy_config("qwen2_5_7b_clip_l14_336_qlora_finetune", str(tmp_path))
    assert "'transformers.CLIPVisionModel.from_pretrained'" in copied.read_text()
    parts = build_data_parts(load_config(str(copied), local_options(folders["llm"], folders["clip"])))
    assert parts.image_seq_length == 576


def test_unreadable_files_are_config_errors(folders, tmp_path):
    recipe, local = "qwen2_5_7b_clip_l14_336_finetune", local_options(folders["llm"], folders["clip"])
    no_config = load_config(recipe, [*local, f"model.vision_encoder.model.{PATH}={tmp_path}"])  # a folder, no config
    with pytest.raises(ConfigError, match=rf"model.vision_encoder.model.{PATH}='.*' has no config.json; point it"):
        build_data_parts(no_config)
    no_vocabulary = load_config(recipe, [*local, f"tokenizer.{PATH}={tmp_path}"])
    with pytest.raises(ConfigError, match=rf"tokenizer.{PATH}='.*' has no tokenizer files"):
        build_data_parts(no_vocabulary)
    no_width = tiny_recipe("qwen2_5_7b_clip_l14_336_linear_finetune")
    no_width.model.llm = dict(type=Qwen2ForCausalLM)
    with pytest.raises(ConfigError, match=r"model.llm: its width cannot be known without building it"):
        build_data_parts(no_width)


# The real CLI entry point, the commands one after another in one process (a process costs seconds
# of imports), each one's output behind a marker line; last, which heavy packages the process imported.
RUN_CLI = """
import json, sys
from vltool.cli.app import main
commands, heavy = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
codes = []
for command in commands:
    print("=== COMMAND", flush=True)
    print("=== COMMAND", file=sys.stderr, flush=True)
    sys.argv = ["vltool", *command]
    try:
        main()
    except SystemExit as exit_:
        codes.append(exit_.code)
print("=== RESULT " + json.dumps(dict(codes=codes, heavy=sorted(m for m in sys.modules if m.split(".")[0] in heavy))))
"""


def run_cli(commands: list[list[str]], cwd: Path) -> tuple[list[str], list[str], dict]:
    """Each command's stdout and stderr, and ``{"codes": exit codes, "heavy": heavy modules imported}``.

    The Hub is offline and its cache an empty folder, so only local files can load.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(cwd / "hf_home"))
    args = [sys.executable, "-c", RUN_CLI, json.dumps(commands), json.dumps(HEAVY)]
    result = subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    stdout, _, summary = result.stdout.partition("=== RESULT ")
    assert summary, result.stdout + result.stderr
    return stdout.split("=== COMMAND")[1:], result.stderr.split("=== COMMAND")[1:], json.loads(summary)


def write_llava_json(path: Path) -> Path:
    ask = {"from": "human", "value": "<image>\nWhat is the man doing?"}
    records = [
        {"id": "ironing", "image": "extreme_ironing.jpg", "conversations": [ask, {"from": "gpt", "value": "Ironing."}]},
        {"id": "chat", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
    ]
    path.write_text(json.dumps(records))
    return path


def test_7b_recipes_through_the_cli_load_no_weights(folders, tmp_path):
    """check-dataset and prepare-dataset, full and QLoRA 7B recipes: no weights, no peft, bitsandbytes or DeepSpeed."""
    data = [f"train_dataloader.dataset.data_path={write_llava_json(tmp_path / 'd.json')}"]
    local = [
        "--cfg-options",
        *local_options(folders["llm"], folders["clip"]),
        *data,
        f"train_dataloader.dataset.image_folder={ASSETS / 'images'}",
    ]
    full, qlora = "qwen2_5_7b_clip_l14_336_finetune", "qwen2_5_7b_clip_l14_336_qlora_finetune"
    commands = [
        ["check-dataset", full, *local],
        ["check-dataset", qlora, "--no-decode", "--num-proc", "2", *local],
        ["prepare-dataset", qlora, "--cache-dir", str(tmp_path / "cache"), *local],
        ["check-dataset", full, "--cfg-options", *data],  # the Hub ids, offline and not cached
    ]
    out, err, result = run_cli(commands, tmp_path)
    assert result == {"codes": [0, 0, 0, 1], "heavy": []}, err
    for table, images in ((out[0], "images"), (out[1], "images (found, not decoded)")):
        table = " ".join(re.sub(r"[│┃|]", " ", table).split())
        assert f"samples 2 {images} 1 text-only samples 1 image tokens per image 576" in table
        assert "problems 0" in table
    stored = re.search(r"prepared dataset: (\S+)", out[2])
    assert stored and Path(stored.group(1)).exists() and str(tmp_path / "cache") in stored.group(1)
    last = err[3].strip().splitlines()[-1]  # the error is one line (transformers may warn before it)
    assert "Traceback" not in err[3] and last.startswith(f"error: tokenizer.{PATH}='Qwen/Qwen2.5-7B-Instruct': cannot")
    assert "download it first (`hf download Qwen/Qwen2.5-7B-Instruct`)" in last
    # the folders still hold only configs and tokenizer files: there were never weights to load
    assert {p.name for p in folders["llm"].iterdir()} == {"config.json", "tokenizer.json", "tokenizer_config.json"}
    assert {p.name for p in folders["clip"].iterdir()} == {"config.json", "preprocessor_config.json"}

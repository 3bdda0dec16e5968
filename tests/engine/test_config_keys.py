"""A composed config holds only keys something reads: overrides reach them or fail, QLoRA is one setting,
the schedule follows the cluster size, and a finetune recipe finds its pretrain run's last checkpoint."""

import math

import numpy as np
import pytest
from mmengine.config import Config

from tests.engine.train_runs import run_train, train_options, write_colour_dataset
from vltool.engine.config import CONFIG_KEYS, copy_config, load_config, resolve_config
from vltool.engine.runner import _param_scheduler_cfg
from vltool.engine.schedule import resolve_train_length
from vltool.engine.stages import pretrained_checkpoint
from vltool.errors import ConfigError
from vltool.model.config_parts import part_cfg
from vltool.model.quantization import quantization_settings

LORA = "qwen2_5_7b_clip_l14_336_lora_finetune"
MIX665K = 665_298


@pytest.mark.parametrize(
    ("option", "closest"),
    [
        ("llm_lora.r=16", "model.llm_lora.r"),
        ("stage.freeze_llm=False", "model.freeze_llm"),
        ("vision_encoder_name_or_path=my/clip", "model.vision_encoder.model.pretrained_model_name_or_path"),
        ("llm_name_or_path=my/qwen", "model.llm.pretrained_model_name_or_path"),
        ("max_iters=10", "train_cfg.max_iters"),
        ("model.llm_lor.r=16", "model.llm_lora.r"),
    ],
)
def test_an_override_that_nothing_reads_names_the_real_key(option, closest):
    with pytest.raises(ConfigError, match=f"Did you mean '{closest}'"):
        load_config(LORA, [option])


def test_the_real_key_takes_effect():
    cfg = load_config(LORA, ["model.llm_lora.r=16", "model.freeze_llm=False"])
    assert cfg.model.llm_lora.r == 16 and cfg.model.freeze_llm is False


def test_a_composed_recipe_keeps_only_keys_that_are_read(tmp_path):
    cfg = load_config(LORA)
    assert set(cfg.keys()) <= set(CONFIG_KEYS)
    assert {"vision_encoder", "projector", "llm", "llm_lora", "freeze_llm"} <= set(cfg.model)
    copied = copy_config(LORA, str(tmp_path)).read_text()
    assert copied.count("r=128") == 1 and copied.count("Qwen/Qwen2.5-7B-Instruct") == 1  # one copy of each
    assert "\nstage =" not in copied and "llm_name_or_path" not in copied


def test_tokenizer_and_image_processor_follow_the_model_sources():
    cfg = load_config(
        LORA,
        [
            "model.llm.pretrained_model_name_or_path=/models/qwen",
            "model.vision_encoder.model.pretrained_model_name_or_path=/models/clip",
        ],
    )
    assert part_cfg(cfg, "tokenizer")["pretrained_model_name_or_path"] == "/models/qwen"
    assert part_cfg(cfg, "image_processor")["pretrained_model_name_or_path"] == "/models/clip"


def test_qlora_is_the_lora_recipe_plus_one_setting():
    qlora = load_config("qwen2_5_7b_clip_l14_336_qlora_finetune")
    switched = load_config(LORA, ["model.llm_quantization=nf4"])
    assert qlora.model.to_dict() == switched.model.to_dict()
    settings = quantization_settings(switched.model)
    assert settings["load_in_4bit"] and settings["bnb_4bit_quant_type"] == "nf4"
    assert quantization_settings(load_config(LORA).model) is None
    assert quantization_settings(load_config(LORA, ["model.llm_quantization=int8"]).model) == {"load_in_8bit": True}


class Mix:
    """The dataset fields the schedule reads: 665k samples of LLaVA's mix, 40,688 of them text-only."""

    def __init__(self, samples: int = MIX665K, text_only: int = 40_688) -> None:
        self.has_image = np.arange(samples) >= text_only

    def __len__(self) -> int:
        return len(self.has_image)


@pytest.mark.parametrize("gpus", [4, 8, 16])
def test_one_epoch_becomes_iterations_for_the_cluster_size(gpus):
    cfg = load_config("qwen2_5_7b_clip_l14_336_finetune")
    assert "max_iters" not in cfg.train_cfg and cfg.train_cfg.max_epochs == 1
    train_cfg = resolve_train_length(cfg, Mix(), gpus)
    global_batch = 16 * gpus
    # images and text-only samples batch apart (LengthGroupedSampler), so each has its own short last batch
    expected = math.ceil((MIX665K - 40_688) / global_batch) + math.ceil(40_688 / global_batch)
    assert train_cfg["max_iters"] == expected and "max_epochs" not in train_cfg
    assert abs(train_cfg["max_iters"] * global_batch - MIX665K) < 2 * global_batch  # one pass over the samples


def test_iterations_scale_with_the_dataset_and_epochs_and_max_iters_wins():
    cfg = load_config("qwen2_5_7b_clip_l14_336_pretrain", ["train_cfg.max_epochs=2"])
    assert resolve_train_length(cfg, Mix(558_128, 0), 8)["max_iters"] == 2 * math.ceil(558_128 / 256)
    explicit = load_config("qwen2_5_7b_clip_l14_336_pretrain", ["train_cfg.max_iters=300"])
    assert resolve_train_length(explicit, Mix(), 8)["max_iters"] == 300
    with pytest.raises(ConfigError, match="max_epochs"):
        resolve_train_length(load_config(LORA, ["train_cfg.max_epochs=0"]), Mix(), 8)


def finetune(*options: str) -> Config:
    return load_config(LORA, list(options))


def test_a_finetune_recipe_finds_its_pretrain_runs_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as missing:
        pretrained_checkpoint(finetune())
    message = str(missing.value)
    assert "work_dirs/qwen2_5_7b_clip_l14_336_pretrain/last_checkpoint does not exist" in message
    assert "`vltool train qwen2_5_7b_clip_l14_336_pretrain`" in message and "\n" not in message
    run = tmp_path / "work_dirs" / "qwen2_5_7b_clip_l14_336_pretrain"
    run.mkdir(parents=True)
    (run / "iter_2181.pth").write_bytes(b"weights")  # a schedule no recipe wrote down
    (run / "last_checkpoint").write_text("work_dirs/qwen2_5_7b_clip_l14_336_pretrain/iter_2181.pth")
    assert pretrained_checkpoint(finetune()) == "work_dirs/qwen2_5_7b_clip_l14_336_pretrain/iter_2181.pth"


def test_pretrain_stage_as_a_work_dir_and_explicit_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "runs" / "my_pretrain"
    other.mkdir(parents=True)
    (other / "iter_7.pth").write_bytes(b"weights")
    (other / "last_checkpoint").write_text("/elsewhere/runs/my_pretrain/iter_7.pth")  # written on another machine
    assert pretrained_checkpoint(finetune(f"pretrain_stage={other}")) == str(other / "iter_7.pth")
    assert pretrained_checkpoint(finetune("pretrained_pth=explicit.pth")) == "explicit.pth"
    assert pretrained_checkpoint(finetune("pretrain_stage=None")) is None
    with pytest.raises(ConfigError, match="--work-dir runs/none"):
        pretrained_checkpoint(finetune("pretrain_stage=runs/none"))


def test_the_zero_qwen_vl_stages_chain(tmp_path, monkeypatch):
    """Stage 2 starts from stage 1's last checkpoint and stage 3 from stage 2's; stage 1 from nothing."""
    monkeypatch.chdir(tmp_path)
    names = [f"zero_qwen_vl_qwen2_0_5b_stage{n}" for n in (1, 2, 3)]
    stages = [load_config(name) for name in names]
    assert stages[0].get("pretrain_stage") is None and pretrained_checkpoint(stages[0]) is None
    for previous, cfg in zip(names[:2], stages[1:], strict=True):
        assert resolve_config(cfg.pretrain_stage) == resolve_config(previous)  # the previous stage's config file
        with pytest.raises(ConfigError, match=f"`vltool train {previous}` first"):
            pretrained_checkpoint(cfg)
    for iters, name in ((2326, names[0]), (1233, names[1])):  # one epoch of 595k at 256, of 158k at 128
        run = tmp_path / "work_dirs" / name
        run.mkdir(parents=True)
        (run / f"iter_{iters}.pth").write_bytes(b"weights")
        (run / "last_checkpoint").write_text(f"work_dirs/{name}/iter_{iters}.pth")
    assert pretrained_checkpoint(stages[1]) == f"work_dirs/{names[0]}/iter_2326.pth"
    assert pretrained_checkpoint(stages[2]) == f"work_dirs/{names[1]}/iter_1233.pth"


def test_the_schedule_follows_the_derived_length():
    cfg = load_config("qwen2_5_7b_clip_l14_336_pretrain")
    cfg.train_cfg = resolve_train_length(cfg, Mix(558_128, 0), 8)
    warmup, cosine = _param_scheduler_cfg(cfg)
    assert cosine["end"] == cfg.train_cfg["max_iters"] == 2181
    assert warmup["end"] == cosine["begin"] == round(0.03 * 2181)


@pytest.mark.slow
def test_an_epoch_run_then_a_stage_that_finds_its_checkpoint(tmp_path):
    """Through the CLI: one epoch of 12 samples at batch 4 is 4 iterations (3 image + 1 text-only batch);
    the next stage, naming that run's work dir, loads its last checkpoint."""
    data = write_colour_dataset(tmp_path, samples=12)  # 10 with an image, 2 text-only
    # no hooks: the demo's read data/vltool_demo under the current directory, which this run does not write
    epoch = [o for o in train_options(data, 1, 4, "custom_hooks=[]") if not o.startswith("train_cfg.max_iters")]
    first = run_train(
        ["demo", "--work-dir", str(tmp_path / "stage1"), *epoch, "train_cfg.max_iters=None", "train_cfg.max_epochs=1"]
    )
    assert "12 samples at 4 per device x 1 processes = 4 iterations per epoch; training for 4 iterations" in (
        first.stdout + first.stderr
    )
    assert (tmp_path / "stage1" / "iter_4.pth").is_file()
    second = run_train(
        [
            "demo",
            "--work-dir",
            str(tmp_path / "stage2"),
            *train_options(data, 1, 4, "custom_hooks=[]", f"pretrain_stage={tmp_path}/stage1"),
        ]
    )
    log = second.stdout + second.stderr
    assert f"its last checkpoint is {tmp_path}/stage1/iter_4.pth" in log and "loaded" in log

"""DeepSpeed configs: the shipped ZeRO JSONs, filling "auto" from the vltool config, and the CLI's errors."""

import copy
import json
import os
import subprocess
import sys

import pytest
from deepspeed.ops.adam import DeepSpeedCPUAdam
from torch.optim import AdamW

from vltool.engine import deepspeed as ds
from vltool.engine.config import load_config
from vltool.engine.deepspeed import (
    deepspeed_optimizer_cfg,
    fill_deepspeed_config,
    offloads,
    read_deepspeed_config,
    shipped_deepspeed_configs,
    zero_stage,
)
from vltool.errors import ConfigError

# name -> (ZeRO stage, optimizer offload device, parameter offload device)
SHIPPED = {
    "zero1": (1, None, None),
    "zero2": (2, None, None),
    "zero2_offload": (2, "cpu", None),
    "zero3": (3, None, None),
    "zero3_offload": (3, "cpu", "cpu"),
}
AUTO_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")


@pytest.fixture(scope="module")
def demo_cfg():
    return load_config("demo")


@pytest.fixture
def warnings(monkeypatch):
    """Messages ``print_log`` was given by the deepspeed module."""
    logged = []
    monkeypatch.setattr(ds, "print_log", lambda message, **kwargs: logged.append((message, kwargs)))
    return logged


def write_json(path, config):
    path.write_text(json.dumps(config))
    return str(path)


# ---------------- shipped configs ----------------


def test_shipped_names():
    assert sorted(shipped_deepspeed_configs()) == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_stage_and_offload(name):
    stage, optimizer_device, param_device = SHIPPED[name]
    path = shipped_deepspeed_configs()[name]
    config = json.loads(path.read_text())
    assert config == read_deepspeed_config(name)
    zero = config["zero_optimization"]
    assert zero["stage"] == stage and zero_stage(config) == stage
    assert zero.get("offload_optimizer", {}).get("device") == optimizer_device
    assert zero.get("offload_param", {}).get("device") == param_device
    assert offloads(config) == (optimizer_device is not None)
    # the batch, accumulation, clipping and precision come from the vltool config
    assert all(config[key] == "auto" for key in AUTO_KEYS)
    assert config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto"


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_fills_completely_on_gpu(name, demo_cfg):
    filled = fill_deepspeed_config(read_deepspeed_config(name), demo_cfg, on_gpu=True)
    assert "auto" not in json.dumps(filled)
    assert filled["zero_optimization"] == read_deepspeed_config(name)["zero_optimization"]


# ---------------- read_deepspeed_config ----------------


def test_unknown_name_lists_every_shipped_config():
    with pytest.raises(ConfigError) as err:
        read_deepspeed_config("zero9")
    message = str(err.value)
    assert "'zero9'" in message
    assert all(name in message for name in SHIPPED)


def test_user_json_file(tmp_path):
    config = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 2}}
    assert read_deepspeed_config(write_json(tmp_path / "mine.json", config)) == config


def test_broken_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "zero_optimization": {"stage": 2},\n  "gradient_clipping": 1.0,,\n}\n')
    with pytest.raises(ConfigError) as err:
        read_deepspeed_config(str(path))
    assert f"{path}:3:" in str(err.value)
    assert "not valid JSON" in str(err.value)


def test_json_that_is_not_an_object(tmp_path):
    with pytest.raises(ConfigError, match="must be a JSON object"):
        read_deepspeed_config(write_json(tmp_path / "list.json", [1, 2]))


def test_missing_file_is_reported_like_an_unknown_name(tmp_path):
    with pytest.raises(ConfigError, match="neither a shipped config"):
        read_deepspeed_config(str(tmp_path / "absent.json"))


# ---------------- zero_stage and offloads ----------------


def test_zero_stage_without_zero_section():
    assert zero_stage({}) == 0
    assert zero_stage({"zero_optimization": {"stage": "3"}}) == 3


@pytest.mark.parametrize(
    ("zero", "expected"),
    [
        ({}, False),
        ({"stage": 2, "offload_optimizer": {"device": "none"}}, False),
        ({"stage": 2, "offload_optimizer": {"device": "cpu"}}, True),
        ({"stage": 3, "offload_param": {"device": "nvme"}}, True),
    ],
)
def test_offloads(zero, expected):
    assert offloads({"zero_optimization": zero}) is expected


# ---------------- fill_deepspeed_config ----------------


def test_auto_fields_come_from_the_vltool_config(demo_cfg, warnings):
    assert demo_cfg.train_dataloader.batch_size == 32
    assert demo_cfg.optim_wrapper.clip_grad.max_norm == 1.0
    filled = fill_deepspeed_config(read_deepspeed_config("zero2"), demo_cfg, on_gpu=True)
    assert filled["train_micro_batch_size_per_gpu"] == 32
    assert filled["gradient_accumulation_steps"] == demo_cfg.optim_wrapper.accumulative_counts == 1
    assert filled["gradient_clipping"] == 1.0
    assert "train_batch_size" not in filled
    assert warnings == []  # "auto" is not a disagreement


def test_overrides_reach_the_deepspeed_config():
    cfg = load_config(
        "demo", ["train_dataloader.batch_size=4", "optim_wrapper.accumulative_counts=8", "optim_wrapper.clip_grad=None"]
    )
    filled = fill_deepspeed_config(read_deepspeed_config("zero3"), cfg, on_gpu=True)
    assert filled["train_micro_batch_size_per_gpu"] == 4
    assert filled["gradient_accumulation_steps"] == 8
    assert filled["gradient_clipping"] == 0.0  # no clipping


@pytest.mark.parametrize(
    ("precision", "on_gpu", "bf16", "fp16"),
    [
        ("bf16", True, True, False),
        ("fp16", True, False, True),
        ("fp32", True, False, False),
        ("bf16", False, False, False),  # CPU training is fp32
        ("fp16", False, False, False),
    ],
)
def test_precision_flags(precision, on_gpu, bf16, fp16):
    cfg = load_config("demo", [f"precision={precision}"])
    filled = fill_deepspeed_config(read_deepspeed_config("zero2"), cfg, on_gpu=on_gpu)
    assert filled["bf16"]["enabled"] is bf16
    assert filled["fp16"]["enabled"] is fp16
    assert filled["fp16"]["initial_scale_power"] == 16  # the JSON's other settings survive


def test_train_batch_size_auto_is_removed_and_an_explicit_one_kept(demo_cfg):
    config = {**read_deepspeed_config("zero2"), "train_batch_size": "auto"}
    assert "train_batch_size" not in fill_deepspeed_config(config, demo_cfg, on_gpu=False)
    config["train_batch_size"] = 64
    assert fill_deepspeed_config(config, demo_cfg, on_gpu=False)["train_batch_size"] == 64


def test_conflicting_user_value_warns_and_vltool_wins(tmp_path, demo_cfg, warnings):
    config = {**read_deepspeed_config("zero2"), "train_micro_batch_size_per_gpu": 3}
    user = read_deepspeed_config(write_json(tmp_path / "mine.json", config))
    filled = fill_deepspeed_config(user, demo_cfg, on_gpu=False)
    assert filled["train_micro_batch_size_per_gpu"] == 32
    assert len(warnings) == 1
    message, kwargs = warnings[0]
    assert "train_micro_batch_size_per_gpu=3" in message
    assert "train_dataloader.batch_size -> 32" in message
    assert "the vltool config wins" in message
    assert kwargs["level"] == 30  # logging.WARNING


def test_conflicting_nested_value_warns(demo_cfg, warnings):
    config = read_deepspeed_config("zero2")
    config["bf16"] = {"enabled": True}
    filled = fill_deepspeed_config(config, demo_cfg, on_gpu=False)  # the CPU trains in fp32
    assert filled["bf16"]["enabled"] is False
    assert len(warnings) == 1 and "bf16.enabled=True" in warnings[0][0]


def test_agreeing_explicit_values_do_not_warn(demo_cfg, warnings):
    config = {**read_deepspeed_config("zero2"), "train_micro_batch_size_per_gpu": 32, "gradient_clipping": 1.0}
    fill_deepspeed_config(config, demo_cfg, on_gpu=False)
    assert warnings == []


def test_missing_sections_are_added(demo_cfg):
    filled = fill_deepspeed_config({"zero_optimization": {"stage": 2}}, demo_cfg, on_gpu=True)
    assert filled["train_micro_batch_size_per_gpu"] == 32
    assert filled["bf16"] == {"enabled": False} and filled["fp16"] == {"enabled": False}  # the demo is fp32


def test_auto_that_vltool_cannot_fill_is_named(demo_cfg):
    config = read_deepspeed_config("zero2")
    config["zero_optimization"]["reduce_bucket_size"] = "auto"
    with pytest.raises(ConfigError, match=r"zero_optimization\.reduce_bucket_size"):
        fill_deepspeed_config(config, demo_cfg, on_gpu=True)


@pytest.mark.parametrize("name", ["zero2_offload", "zero3_offload"])
def test_offload_without_gpu_is_refused(name, demo_cfg):
    with pytest.raises(ConfigError) as err:
        fill_deepspeed_config(read_deepspeed_config(name), demo_cfg, on_gpu=False)
    message = str(err.value)
    assert "needs a GPU" in message
    assert "--deepspeed zero2 or zero3" in message


def test_offload_on_gpu_is_filled(demo_cfg):
    filled = fill_deepspeed_config(read_deepspeed_config("zero3_offload"), demo_cfg, on_gpu=True)
    assert filled["zero_optimization"]["offload_param"]["device"] == "cpu"


def test_input_is_not_mutated(demo_cfg):
    config = {**read_deepspeed_config("zero2"), "train_batch_size": "auto", "gradient_clipping": 5.0}
    before = copy.deepcopy(config)
    fill_deepspeed_config(config, demo_cfg, on_gpu=True)
    assert config == before


# ---------------- deepspeed_optimizer_cfg ----------------


def test_optimizer_without_offload_keeps_its_type_and_drops_fused(demo_cfg):
    optimizer = demo_cfg.optim_wrapper.optimizer
    assert optimizer.fused is True
    result = deepspeed_optimizer_cfg(optimizer, read_deepspeed_config("zero2"))
    assert result["type"] is AdamW
    assert "fused" not in result and "adamw_mode" not in result
    assert result["lr"] == optimizer.lr and result["betas"] == optimizer.betas
    assert optimizer.fused is True  # the config itself is untouched


@pytest.mark.parametrize("name", ["zero2_offload", "zero3_offload"])
def test_offloaded_optimizer_is_deepspeed_cpu_adamw(name, demo_cfg):
    optimizer = demo_cfg.optim_wrapper.optimizer
    result = deepspeed_optimizer_cfg(optimizer, read_deepspeed_config(name))
    assert result["type"] is DeepSpeedCPUAdam
    assert result["adamw_mode"] is True
    assert "fused" not in result
    assert result["lr"] == optimizer.lr and result["weight_decay"] == optimizer.weight_decay
    assert optimizer.type is AdamW


# ---------------- the CLI ----------------


def vltool_train(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "NPROC_PER_NODE")}
    return subprocess.run(
        [sys.executable, "-m", "vltool.cli.app", "train", "demo", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def one_error_line(result):
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_cli_unknown_deepspeed_name(tmp_path):
    result = vltool_train("--deepspeed", "zero9", "--cfg-options", "data_preparation=None", cwd=tmp_path)
    error = one_error_line(result)
    assert "'zero9'" in error
    assert all(name in error for name in SHIPPED)
    assert not (tmp_path / "work_dirs").exists()  # failed before building anything


def test_cli_offload_on_cpu(tmp_path):
    result = vltool_train("--deepspeed", "zero2_offload", "--cfg-options", "data_preparation=None", cwd=tmp_path)
    error = one_error_line(result)
    assert "needs a GPU" in error and "--deepspeed zero2 or zero3" in error
    assert not (tmp_path / "work_dirs").exists()


@pytest.mark.parametrize("order", ["resume_first", "resume_last"])
def test_cli_bare_resume_in_an_empty_work_dir(tmp_path, order):
    work_dir = tmp_path / "run"
    work_dir.mkdir()
    args = ["--resume", "--work-dir", str(work_dir)]
    if order == "resume_last":
        args = ["--work-dir", str(work_dir), "--resume"]
    error = one_error_line(vltool_train(*args, cwd=tmp_path))
    assert "nothing to resume" in error and str(work_dir) in error
    assert not list(work_dir.iterdir()) and not (tmp_path / "data").exists()  # no data prepared, no logs

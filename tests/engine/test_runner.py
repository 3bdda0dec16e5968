"""The runner built from a config: seeded model init, trainable-only checkpoints."""

import json

import pytest
import torch
from PIL import Image

from vltool.engine.config import load_config
from vltool.engine.runner import build_runner, check_gpu_only_options
from vltool.errors import ConfigError


def tiny_demo_cfg(tmp_path, *options: str, answer: str = "Red."):
    """The demo config on eight copies of one red-image sample, without hooks, data preparation or logging."""
    Image.new("RGB", (64, 64), "red").save(tmp_path / "r.png")
    record = {
        "image": "r.png",
        "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": answer}],
    }
    (tmp_path / "d.json").write_text(json.dumps([record] * 8))
    return load_config(
        "demo",
        [
            f"train_dataloader.dataset.data_path={tmp_path / 'd.json'}",
            f"train_dataloader.dataset.image_folder={tmp_path}",
            "train_cfg.max_iters=2",
            "train_dataloader.batch_size=4",
            "custom_hooks=[]",
            "data_preparation=None",
            *options,
        ],
    )


def tiny_demo(tmp_path, seed):
    return build_runner(tiny_demo_cfg(tmp_path, f"randomness.seed={seed}"), str(tmp_path / f"work{seed}"))


def test_same_seed_same_initial_weights_and_checkpoint_holds_trainable_only(tmp_path):
    first, again, other = (tiny_demo(tmp_path, s).model.vlm for s in (3, 3, 4))
    torch.testing.assert_close(first.projector.linear_1.weight, again.projector.linear_1.weight)
    assert not torch.equal(first.projector.linear_1.weight, other.projector.linear_1.weight)

    runner = tiny_demo(tmp_path, 5)
    runner.train()
    checkpoint = torch.load(tmp_path / "work5" / "iter_2.pth", map_location="cpu", weights_only=False)
    keys = set(checkpoint["state_dict"])
    assert "vlm.projector.linear_1.weight" in keys and "vlm.llm.lm_head.weight" in keys
    assert "vlm.llm.model.embed_tokens.weight" not in keys  # frozen in the demo, so not saved


def test_gpu_only_options_are_refused_plainly_on_cpu():
    cfg = load_config("demo", ["data_preparation=None", "model.llm.attn_implementation=flash_attention_2"])
    with pytest.raises(ConfigError, match="flash_attention_2.*needs a CUDA GPU.*this machine has no GPU"):
        check_gpu_only_options(cfg)

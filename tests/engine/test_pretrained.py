"""Multi-stage training: a finetune config's ``pretrained_pth`` loads the pretrain checkpoint, with a report."""

import subprocess

import pytest
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from tests.engine.train_runs import train_options, vltool_command, write_colour_dataset
from tests.engine.zero_runs import run_ranks
from vltool.engine import safe_load
from vltool.engine.checkpoint import load_pretrained
from vltool.engine.config import load_config
from vltool.errors import ConfigError
from vltool.model.builder import build_parts


@pytest.fixture(scope="module")
def vlm():
    return build_parts(load_config("demo", ["data_preparation=None"])).model


def save_checkpoint(path, weights):
    torch.save({"meta": {}, "state_dict": weights}, path)
    return path


def test_projector_checkpoint_loads_and_reports_the_rest(vlm, tmp_path, monkeypatch):
    logged = []
    monkeypatch.setattr("vltool.engine.checkpoint.print_log", lambda message, **_: logged.append(message))
    projector = {f"vlm.projector.{n}": torch.full_like(p, 0.5) for n, p in vlm.projector.named_parameters()}
    load_pretrained(vlm, save_checkpoint(tmp_path / "pretrain.pth", projector))
    assert all(torch.equal(p, torch.full_like(p, 0.5)) for p in vlm.projector.parameters())
    log = "\n".join(logged)
    assert f"loaded {len(projector)} tensors" in log
    trainable_elsewhere = sum(p.requires_grad for n, p in vlm.named_parameters() if not n.startswith("projector"))
    assert f"{trainable_elsewhere} trainable parameters not in the checkpoint keep their initial weights" in log


def test_checkpoint_that_does_not_fit_names_the_keys(vlm, tmp_path):
    weights = {"vlm.projector.linear_9.weight": torch.zeros(2, 2), "vlm.resampler.query": torch.zeros(4)}
    with pytest.raises(ConfigError, match="unexpected keys vlm.projector.linear_9.weight|projector.linear_9.weight"):
        load_pretrained(vlm, save_checkpoint(tmp_path / "other.pth", weights))
    wrong_shape = {"vlm.projector.linear_1.weight": torch.zeros(3, 3)}
    with pytest.raises(ConfigError, match=r"projector.linear_1.weight: checkpoint shape \(3, 3\) != model shape"):
        load_pretrained(vlm, save_checkpoint(tmp_path / "shape.pth", wrong_shape))
    with pytest.raises(ConfigError, match="does not exist"):
        load_pretrained(vlm, tmp_path / "missing.pth")


def test_cli_reports_a_pretrained_pth_that_does_not_fit(tmp_path):
    data = write_colour_dataset(tmp_path, samples=6)
    bad = save_checkpoint(tmp_path / "bad.pth", {"vlm.projector.extra.weight": torch.zeros(1)})
    options = train_options(data, 1, 2, f"pretrained_pth={bad}")
    result = subprocess.run(
        vltool_command("train", "demo", "--work-dir", str(tmp_path / "w"), *options), capture_output=True, text=True
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "projector.extra.weight" in lines[0] and "Traceback" not in result.stderr


def test_a_damaged_checkpoint_is_one_clear_error(vlm, tmp_path):
    damaged = tmp_path / "cut.pth"
    damaged.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"cut.pth: not a readable checkpoint"):
        load_pretrained(vlm, damaged)


@pytest.fixture(scope="module")
def zero2_checkpoint(module_tmp):
    """A ZeRO-2 directory as `vltool train --deepspeed zero2` writes it (trainable weights only), from one process."""
    checkpoint = module_tmp("zero2") / "iter_1.pth"
    run_ranks(["save", "--model", "vlm", "--stage", "2", "--exclude-frozen", "--checkpoint", str(checkpoint)], 1)
    return checkpoint


def test_a_deepspeed_pretrained_pth_is_read_by_rank_0_alone(zero2_checkpoint):
    ranks = run_ranks(["load", "--model", "vlm", "--checkpoint", str(zero2_checkpoint)], 2)
    with safe_load.weights_only_loading(zero2_checkpoint):
        consolidated = get_fp32_state_dict_from_zero_checkpoint(str(zero2_checkpoint.parent), zero2_checkpoint.name)
    expected = {
        name.removeprefix("vlm."): float(value.detach().sum(dtype=torch.float64))
        for name, value in consolidated.items()
    }
    masters = sum(file.stat().st_size for file in zero2_checkpoint.glob("*_optim_states.pt"))  # the fp32 weights
    for rank in ranks:  # every parameter of every rank holds DeepSpeed's consolidated value
        assert rank["sums"] == pytest.approx(expected, rel=1e-12, abs=1e-9)
    # DeepSpeed's consolidation on every rank grew each by twice the weights (module file read whole, then
    # the partitions concatenated); now rank 0 holds one 64 MiB window of the files, the others nothing
    assert ranks[0]["growth_kb"] * 1024 < 0.35 * masters, (ranks[0]["growth_kb"], masters)
    assert ranks[1]["growth_kb"] * 1024 < 0.1 * masters, (ranks[1]["growth_kb"], masters)
    # a checkpoint that does not fit is one error on every rank, not a rank waiting for the others forever
    wrong = run_ranks(["load", "--model", "toy", "--checkpoint", str(zero2_checkpoint)], 2)
    assert all("does not fit this model: unexpected keys" in rank["error"] for rank in wrong)

"""Checkpoints read a tensor at a time: DeepSpeed's consolidation bit for bit, at a window of the file's size."""

from pathlib import Path

import pytest
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from tests.engine.zero_runs import TiedHead, run_ranks
from vltool.engine import lazy_weights, safe_load
from vltool.engine.checkpoint import load_pretrained, read_weights
from vltool.engine.lazy_weights import LazyTensor, open_weights
from vltool.errors import ConfigError


@pytest.fixture(scope="module", params=[(1, 2), (2, 2), (2, 3)], ids=["zero2_one_rank", "zero2_two_ranks", "zero3"])
def zero_checkpoint(request, module_tmp):
    """A toy model's checkpoint with padding, two groups, a buffer, a frozen and a tied parameter."""
    ranks, stage = request.param
    checkpoint = module_tmp(f"zero{stage}_{ranks}") / "iter_1.pth"
    run_ranks(["save", "--stage", str(stage), "--checkpoint", str(checkpoint)], ranks)
    return checkpoint


def test_every_tensor_is_deepspeeds_consolidation_bit_for_bit(zero_checkpoint):
    with safe_load.weights_only_loading(zero_checkpoint):
        expected = get_fp32_state_dict_from_zero_checkpoint(str(zero_checkpoint.parent), zero_checkpoint.name)
    weights = read_weights(zero_checkpoint)
    assert list(weights) == list(expected) and {"scale", "frozen", "tied.weight"} <= set(weights)
    for name, value in expected.items():
        assert weights[name].dtype == value.dtype and torch.equal(weights[name], value), name


def test_a_tied_weight_saved_under_both_names_loads_once(tmp_path):
    checkpoint = tmp_path / "iter_1.pth"
    run_ranks(["save", "--model", "tied", "--checkpoint", str(checkpoint)], 1)
    model = TiedHead()
    load_pretrained(model, checkpoint)  # DeepSpeed lists head.weight as a shared alias of embed.weight
    assert model.head.weight is model.embed.weight
    assert torch.equal(model.embed.weight, read_weights(checkpoint)["embed.weight"])


def test_a_damaged_or_partial_directory_is_one_clear_error(tmp_path):
    (tmp_path / "iter_1.pth").mkdir()
    with pytest.raises(ConfigError, match="not a DeepSpeed checkpoint directory"):
        open_weights(tmp_path / "iter_1.pth")


def test_copies_cross_pieces_and_chunks_and_convert_the_dtype(monkeypatch, tmp_path):
    monkeypatch.setattr(lazy_weights, "CHUNK_BYTES", 4 * 4)  # four float32 elements per copy
    values = torch.arange(30, dtype=torch.float32)
    torch.save({"state_dict": {"a": values[:11].clone(), "b": values[11:].clone()}}, tmp_path / "w.pth")
    files = open_weights(tmp_path / "w.pth")
    # a tensor made of three pieces, the last one padded (as ZeRO-3 pads partitions)
    joined = LazyTensor(torch.Size([4, 5]), torch.float32, [files["a"].pieces[0], files["b"].pieces[0][:9], values])
    target = torch.zeros(4, 5, dtype=torch.bfloat16)
    joined.copy_to(target)
    assert torch.equal(target, values[:20].view(4, 5).to(torch.bfloat16))
    transposed = torch.zeros(5, 4).t()  # not contiguous
    joined.copy_to(transposed)
    assert torch.equal(transposed, values[:20].view(4, 5))
    # pages handed back are read again from the file when touched again
    assert torch.equal(files["b"].materialize(), values[11:])


def test_a_legacy_file_read_whole_keeps_its_values(monkeypatch, tmp_path):
    monkeypatch.setattr(lazy_weights, "CHUNK_BYTES", 2**16)  # whole pages in every chunk
    values = torch.randn(2**18)
    torch.save({"state_dict": {"w": values}}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    weights = open_weights(tmp_path / "old.pth")  # not a zip file: read into memory, not mapped
    assert not weights["w"].mapped
    # its pages are this process's own: handing them back would have zeroed the second copy
    assert torch.equal(weights["w"].materialize(), values) and torch.equal(weights["w"].materialize(), values)


def test_a_checkpoint_file_is_mapped_not_read(tmp_path):
    torch.save({"state_dict": {"w": torch.randn(64, 2**20)}}, tmp_path / "big.pth")  # 256 MiB
    target = torch.ones(64, 2**20)
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
    before = _memory_kb("VmRSS")
    open_weights(tmp_path / "big.pth")["w"].copy_to(target)
    # reading it whole would add 256 MiB; the copy holds one 64 MiB window of the file at a time
    assert _memory_kb("VmHWM") - before < 80 * 1024
    assert torch.equal(target[3], torch.load(tmp_path / "big.pth")["state_dict"]["w"][3])


def _memory_kb(field: str) -> int:
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))

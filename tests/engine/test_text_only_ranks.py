"""Projector-only training on mixed data in two processes, one of which gets only text: no crash, the same curve."""

import json

import pytest
from PIL import Image

from tests.engine.train_runs import logged_losses, run_train, train_options

pytestmark = pytest.mark.slow
ITERS = 4
PROJECTOR_ONLY = [
    "model.freeze_llm=True",
    "model.freeze_vision_encoder=True",
    # in order, so that with two processes rank 0 reads the even (text-only) samples, rank 1 the odd ones
    "train_dataloader.sampler.type=mmengine.dataset.DefaultSampler",
    "train_dataloader.sampler.shuffle=False",
    "custom_hooks=[]",
    "randomness.seed=0",
]


@pytest.fixture(scope="module")
def data(module_tmp):
    root = module_tmp("mixed")
    Image.new("RGB", (64, 64), "red").save(root / "red.png")
    records = []
    for i in range(2 * ITERS):
        if i % 2 == 0:
            turns = [{"from": "human", "value": "Say a colour."}, {"from": "gpt", "value": "Blue, of course."}]
            records.append({"id": str(i), "conversations": turns})
        else:
            turns = [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]
            records.append({"id": str(i), "image": "red.png", "conversations": turns})
    path = root / "mixed.json"
    path.write_text(json.dumps(records))
    return path


def train(data, work_dir, nproc, *args):
    options = train_options(data, ITERS, 2 // nproc, *PROJECTOR_ONLY)
    run_train(["demo", "--work-dir", str(work_dir), *args, *options], nproc=nproc)
    losses = logged_losses(work_dir)
    assert sorted(losses) == list(range(1, ITERS + 1))
    return losses


@pytest.mark.parametrize("deepspeed", [None, "zero2"])
def test_a_rank_with_only_text_trains_beside_one_with_images(data, tmp_path, deepspeed):
    single = train(data, tmp_path / "single", 1)
    args = ["--deepspeed", deepspeed] if deepspeed else []
    losses = train(data, tmp_path / "two", 2, *args)
    for step, loss in single.items():
        assert losses[step] == pytest.approx(loss, abs=1e-5), step
    assert losses[ITERS] < losses[1]  # the projector learned from the image samples

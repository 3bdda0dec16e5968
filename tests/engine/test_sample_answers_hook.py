"""SampleAnswersHook: greedy answers to fixed questions before, during and after training, training unchanged."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmengine.hooks import Hook

from tests.convert.trained_runs import demo_config, write_data
from tests.engine.train_runs import logged_losses
from vltool.data.demo_task import FREE_QUESTIONS, write_demo_dataset
from vltool.data.images import load_image
from vltool.engine.config import load_config
from vltool.engine.hooks import SampleAnswersHook, unwrap
from vltool.engine.runner import build_runner
from vltool.errors import ConfigError, DatasetError
from vltool.infer.pipeline import GenerationOptions
from vltool.templates.message import Message

ITERS, EVERY, MAX_NEW_TOKENS = 3, 2, 4
PROMPTS = ["What colour is it?", "Say a colour."]


class TrainModeSpy(Hook):
    """Records whether the model is in train mode right after SampleAnswersHook (priority LOW) has run."""

    priority = "VERY_LOW"

    def __init__(self) -> None:
        self.modes: list[bool] = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.modes.append(unwrap(runner.model).training)

    def after_train(self, runner) -> None:
        self.modes.append(unwrap(runner.model).training)


def sample_hook(images: list[str]) -> dict:
    # the type as a dotted name, as in a config file, so mmengine can dump the config into the work dir
    return dict(
        type="vltool.engine.hooks.SampleAnswersHook",
        prompts=PROMPTS,
        images=images,
        every_n_iters=EVERY,
        max_new_tokens=MAX_NEW_TOKENS,
    )


def image_data(root: Path) -> Path:
    """The colour dataset without its text-only samples: a text-only batch has no gradient when the LLM is frozen."""
    data = write_data(root)
    records = [record for record in json.loads(data.read_text()) if "image" in record]
    data.write_text(json.dumps(records))
    return data


def build(data: Path, work_dir: Path, hooks: list[dict]):
    """The demo config on ``data``: ITERS iterations of batch 4, frozen LLM (fast), no checkpoints."""
    cfg = demo_config(data, f"train_cfg.max_iters={ITERS}", "default_hooks.logger.interval=1", "model.freeze_llm=True")
    cfg.default_hooks.checkpoint = None
    cfg.custom_hooks = hooks
    return build_runner(cfg, str(work_dir))


def train(data: Path, work_dir: Path, hooks: list[dict]) -> tuple:
    runner = build(data, work_dir, hooks)
    spy = TrainModeSpy()
    runner.register_hook(spy)
    runner.train()
    return runner, spy, torch.get_rng_state()


@pytest.fixture(scope="module")
def runs(module_tmp):
    root = module_tmp("sample_answers")
    data = image_data(root)
    images = [str(root / "red.png"), str(root / "blue.png")]
    with_hook = train(data, root / "with_hook", [sample_hook(images)])
    without = train(data, root / "without", [])
    return images, with_hook, without


def records(work_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (work_dir / SampleAnswersHook.FILE_NAME).read_text().splitlines()]


def test_answers_before_every_n_and_after_training(runs):
    images, (runner, _, _), _ = runs
    rows = records(Path(runner.work_dir))
    questions = [(image, prompt) for image in images for prompt in PROMPTS]
    # before training, after iteration 2, and after the last (3rd), which was not a multiple of 2
    assert [row["iter"] for row in rows] == [it for it in (0, EVERY, ITERS) for _ in questions]
    assert [(row["image"], row["prompt"]) for row in rows] == questions * 3
    assert all(set(row) == {"iter", "image", "prompt", "answer"} and isinstance(row["answer"], str) for row in rows)


def test_last_answers_are_the_final_models_greedy_answers(runs):
    images, (runner, _, _), _ = runs
    hook = next(h for h in runner.hooks if isinstance(h, SampleAnswersHook))
    model = unwrap(runner.model)
    assert hook.pipeline.model is model and model.training
    conversations = [[Message("user", f"<image>\n{prompt}")] for _ in images for prompt in PROMPTS]
    pictures = [[load_image(image)] for image in images for _ in PROMPTS]
    expected = hook.pipeline.answer(conversations, pictures, GenerationOptions(max_new_tokens=MAX_NEW_TOKENS))
    assert [row["answer"] for row in records(Path(runner.work_dir))[-len(expected) :]] == expected


def test_training_is_unchanged_by_the_hook(runs):
    _, (runner, spy, rng), (plain, plain_spy, plain_rng) = runs
    losses = logged_losses(Path(runner.work_dir))
    assert sorted(losses) == list(range(1, ITERS + 1))
    assert losses == logged_losses(Path(plain.work_dir))
    assert torch.equal(rng, plain_rng)  # greedy answers draw no random numbers
    assert spy.modes == plain_spy.modes == [True] * (ITERS + 1)
    assert not (Path(plain.work_dir) / SampleAnswersHook.FILE_NAME).exists()


def test_a_missing_image_fails_the_run_at_the_start(tmp_path):
    data = image_data(tmp_path)
    missing = tmp_path / "nowhere" / "gone.png"
    runner = build(data, tmp_path / "work", [sample_hook([str(tmp_path / "red.png"), str(missing)])])
    with pytest.raises(DatasetError) as err:
        runner.train()
    message = str(err.value)
    assert "\n" not in message and f"{missing}: image file not found." in message and "SampleAnswersHook" in message
    assert runner.iter == 0 and not (tmp_path / "work" / SampleAnswersHook.FILE_NAME).exists()


def test_no_second_answer_when_the_last_iteration_was_just_answered():
    hook = SampleAnswersHook(None, prompts=["Hi?"], every_n_iters=2)
    hook._answered_at = 4
    hook.after_train(SimpleNamespace(iter=4))  # answering would reach for the runner's model and fail


def test_text_only_questions_and_system_prompt():
    hook = SampleAnswersHook(None, prompts=["Hi?", "Bye?"], system="Be brief.")
    assert hook.questions() == [(None, "Hi?"), (None, "Bye?")]
    assert hook.conversations()[1] == [Message("system", "Be brief."), Message("user", "Bye?")]
    with pytest.raises(ConfigError, match="prompts"):
        SampleAnswersHook(None, prompts=[])
    with pytest.raises(ConfigError, match="every_n_iters=0"):
        SampleAnswersHook(None, prompts=["Hi?"], every_n_iters=0)


def test_demo_asks_taught_questions_about_pictures_it_writes(tmp_path):
    cfg = load_config("demo")
    (hook,) = [h for h in cfg.custom_hooks if h["type"] is SampleAnswersHook]
    assert set(hook["prompts"]) <= set(FREE_QUESTIONS.values())
    assert 3 <= cfg.train_cfg.max_iters // hook["every_n_iters"] <= 4
    # the first pictures are drawn the same whatever the dataset size, so two samples suffice
    preparation = cfg.data_preparation
    write_demo_dataset(str(tmp_path), num_train=2, num_eval=1, image_size=preparation.image_size)
    for image in hook["images"]:
        load_image(tmp_path / Path(image).relative_to(preparation.data_root))

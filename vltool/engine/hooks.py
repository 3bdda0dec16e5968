"""Training hooks: tokens/s, progress bar, loss-curve PNG, held-out accuracy, sample answers, PEFT adapter export."""

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.runner import Runner
from peft import PeftModel
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vltool.constants import IGNORE_INDEX, IMAGE_TOKEN
from vltool.data.images import load_image
from vltool.engine.checkpoint import gathered_state
from vltool.engine.model import TrainingModel
from vltool.errors import ConfigError, DatasetError
from vltool.eval.mmbench import HeldOutResult, heldout_accuracy
from vltool.infer.pipeline import GenerationOptions, Pipeline
from vltool.io import staged_directory
from vltool.model.lora import ADAPTER_DIRS, save_adapters
from vltool.model.vlm import VisionLanguageModel
from vltool.templates.message import Message


def unwrap(model: Any) -> VisionLanguageModel:
    """The :class:`VisionLanguageModel` inside the runner's model (DDP and DeepSpeed wrappers included)."""
    while not isinstance(model, TrainingModel):
        model = model.module
    return model.vlm


def is_partitioned(vlm: VisionLanguageModel) -> bool:
    """Whether ZeRO-3 partitions the model: every rank must then take part in each forward pass."""
    return any(hasattr(param, "ds_id") for param in vlm.parameters())


class SupervisedTokensHook(Hook):
    """Logs ``tokens_per_sec``: learned (supervised) tokens per second of wall time, data loading included."""

    priority = "NORMAL"

    def before_train(self, runner: Runner) -> None:
        self._last = time.perf_counter()

    def after_train_iter(self, runner: Runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        now = time.perf_counter()
        # labels are still on the host here: counting them costs no device sync
        supervised = int((data_batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        runner.message_hub.update_scalar("train/tokens_per_sec", supervised / max(now - self._last, 1e-9))
        self._last = now


class RichProgressHook(Hook):
    """A rich progress bar with loss, supervised tokens/s and ETA, shown when stdout is a terminal.

    mmengine's log lines are routed through the bar's console so they print above it.
    """

    priority = "LOW"

    def before_train(self, runner: Runner) -> None:
        self._progress = None
        if not sys.stdout.isatty() or runner.rank != 0:
            return
        console = Console()
        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeRemainingColumn(),
            console=console,
        )
        self._task = self._progress.add_task("train", total=runner.max_iters, completed=runner.iter, loss="-", tps="-")
        self._progress.start()
        self._handlers = [h for h in runner.logger.handlers if type(h) is logging.StreamHandler]
        for handler in self._handlers:
            handler.setStream(console.file)

    def after_train_iter(self, runner: Runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        if self._progress is None:
            return
        hub = runner.message_hub
        loss = hub.get_scalar("train/loss").mean(10) if "train/loss" in hub.log_scalars else float("nan")
        tps = hub.get_scalar("train/tokens_per_sec").mean(10) if "train/tokens_per_sec" in hub.log_scalars else 0
        self._progress.update(self._task, completed=runner.iter + 1, loss=f"{loss:.4f}", tps=f"{tps:,.0f}")

    def after_train(self, runner: Runner) -> None:
        if self._progress is not None:
            self._progress.stop()
            for handler in self._handlers:
                handler.setStream(sys.stdout)


class LossCurveHook(Hook):
    """Writes ``loss_curve.png`` into the work dir from the logged ``vis_data/scalars.json``."""

    priority = "VERY_LOW"

    def after_train(self, runner: Runner) -> None:
        scalars = Path(runner.log_dir) / "vis_data" / "scalars.json"
        if runner.rank != 0 or not scalars.is_file():
            return
        rows = [json.loads(line) for line in scalars.read_text().splitlines() if line.strip()]
        points = [(row["step"], row["loss"]) for row in rows if "loss" in row]
        if not points:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 3.5))
        axis.plot(*zip(*points, strict=True))
        axis.set(xlabel="iteration", ylabel="loss", title="training loss")
        axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(Path(runner.work_dir) / "loss_curve.png", dpi=100)
        plt.close(figure)
        runner.logger.info(f"loss curve written to {Path(runner.work_dir) / 'loss_curve.png'}")


class MultipleChoiceEvalHook(Hook):
    """After training, answers an MMBench-layout TSV and logs CircularEval and vanilla accuracy per category.

    With ``circular`` (the default), every question is asked once per rotation of its options
    and counts as right only when every rotation is (MMBench's CircularEval); vanilla accuracy is
    pass 0 alone. The last line logged is the headline figure.

    Args:
        pipeline: the inference pipeline (filled in by vltool's runner builder).
        data_path: the TSV.
        batch_size: prompts per generation batch.
        max_new_tokens: longest answer.
        circular: CircularEval next to vanilla accuracy, or vanilla alone (pass 0 only: faster).
    """

    priority = "VERY_LOW"

    def __init__(
        self, pipeline: Pipeline, data_path: str, batch_size: int = 32, max_new_tokens: int = 8, circular: bool = True
    ) -> None:
        self.pipeline = pipeline
        self.data_path = data_path
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.circular = circular

    def after_train(self, runner: Runner) -> None:
        if runner.rank != 0 and not is_partitioned(unwrap(runner.model)):
            return
        result = heldout_accuracy(self.pipeline, self.data_path, self.batch_size, self.max_new_tokens, self.circular)
        for line in heldout_report(result, Path(self.data_path).name):
            runner.logger.info(line)
        if runner.rank != 0:
            return
        runner.message_hub.update_info("heldout_accuracy", result.accuracy)
        runner.message_hub.update_info("heldout_vanilla_accuracy", result.vanilla_accuracy)
        (Path(runner.work_dir) / "heldout_accuracy.json").write_text(json.dumps(result.to_dict(), indent=1))


def heldout_report(result: HeldOutResult, name: str) -> list[str]:
    """The hook's lines: one per category, then the headline (CircularEval next to vanilla, when circular)."""
    circular = result.scored.circular
    lines = []
    vanilla = result.per_category(vanilla=True)
    for category, accuracy in result.per_category().items():
        figures = f"circular {accuracy:.1%}, vanilla {vanilla[category]:.1%}" if circular else f"{accuracy:.1%}"
        lines.append(f"held-out accuracy [{category}]: {figures}")
    if circular:
        lines.append(
            f"held-out circular accuracy {result.accuracy:.1%} (vanilla {result.vanilla_accuracy:.1%}) on "
            f"{result.questions} questions ({name}, {result.passes} prompts: each question once per rotation of its "
            f"options, right only if right every time); chance is {result.circular_chance:.1%} "
            f"(vanilla {result.chance:.0%})"
        )
    else:
        lines.append(
            f"held-out accuracy {result.accuracy:.1%} on {result.questions} questions ({name}, vanilla: "
            f"options in the file's order only); chance is {result.chance:.0%}"
        )
    return lines


class SampleAnswersHook(Hook):
    """Answers fixed questions during training so a reader can watch the model learn (XTuner's ``EvaluateChatHook``).

    Every prompt is asked about every image, one image per question (an ``<image>`` line, then
    the prompt), or without an image when there are none. The questions are answered greedily in one batch
    before training, after every ``every_n_iters`` iterations and after training (unless the last
    iteration was just answered). Each answer is logged, and rank 0 appends JSON lines
    ``{"iter", "image", "prompt", "answer"}`` to ``<work_dir>/sample_answers.jsonl``. Greedy
    decoding draws no random numbers and the model returns to train mode, so training is the
    same with or without the hook. Under ZeRO-3 every rank generates; otherwise only rank 0.

    Args:
        pipeline: the inference pipeline (filled in by vltool's runner builder).
        prompts: the questions.
        images: image paths; each prompt is asked about each image. None or empty: text-only.
            They are loaded before training starts, so a bad path stops the run at once.
        every_n_iters: answer after every this many training iterations.
        max_new_tokens: longest answer.
        system: the system prompt; None keeps the template's default.
    """

    priority = "LOW"
    FILE_NAME = "sample_answers.jsonl"

    def __init__(
        self,
        pipeline: Pipeline,
        prompts: list[str],
        images: list[str] | None = None,
        every_n_iters: int = 500,
        max_new_tokens: int = 64,
        system: str | None = None,
    ) -> None:
        if not prompts:
            raise ConfigError("SampleAnswersHook needs at least one entry in 'prompts'.")
        if every_n_iters < 1:
            raise ConfigError(f"SampleAnswersHook every_n_iters={every_n_iters} must be 1 or more.")
        self.pipeline = pipeline
        self.prompts = list(prompts)
        self.image_paths = list(images or [])
        self.every_n_iters = every_n_iters
        self.options = GenerationOptions(max_new_tokens=max_new_tokens)
        self.system = system
        self._images: list[Image.Image] = []
        self._answered_at: int | None = None

    def questions(self) -> list[tuple[str | None, str]]:
        """``(image path or None, prompt)`` for every question, image by image."""
        return [(image, prompt) for image in self.image_paths or [None] for prompt in self.prompts]

    def conversations(self) -> list[list[Message]]:
        """The questions as generation prompts, in :meth:`questions` order."""
        system = [Message("system", self.system)] if self.system is not None else []
        return [
            [*system, Message("user", f"{IMAGE_TOKEN}\n{prompt}" if image is not None else prompt)]
            for image, prompt in self.questions()
        ]

    def before_train(self, runner: Runner) -> None:
        # every rank loads, so a bad path fails all of them at the start rather than hanging the others
        try:
            self._images = [load_image(path) for path in self.image_paths]
        except DatasetError as err:
            raise DatasetError(f"{err} Fix or remove it in SampleAnswersHook's images (custom_hooks).") from None
        self._answer(runner, runner.iter)

    def after_train_iter(self, runner: Runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        if self.every_n_train_iters(runner, self.every_n_iters):
            self._answer(runner, runner.iter + 1)  # runner.iter counts this iteration only after the hooks

    def after_train(self, runner: Runner) -> None:
        if self._answered_at != runner.iter:
            self._answer(runner, runner.iter)

    def _answer(self, runner: Runner, iteration: int) -> None:
        self._answered_at = iteration
        if runner.rank != 0 and not is_partitioned(unwrap(runner.model)):
            return
        loaded = dict(zip(self.image_paths, self._images, strict=True))
        images = [[loaded[image]] if image is not None else [] for image, _ in self.questions()]
        answers = self.pipeline.answer(self.conversations(), images, self.options)
        if runner.rank != 0:
            return
        records = [
            {"iter": iteration, "image": image, "prompt": prompt, "answer": answer}
            for (image, prompt), answer in zip(self.questions(), answers, strict=True)
        ]
        for record in records:
            runner.logger.info(
                f"sample answer at iter {iteration} [{record['image'] or 'no image'}] "
                f"{record['prompt']!r} -> {record['answer']!r}"
            )
        with open(Path(runner.work_dir) / self.FILE_NAME, "a", encoding="utf-8") as file:
            file.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


class AdapterExportHook(Hook):
    """Writes the LoRA adapters in PEFT's own format with every checkpoint: ``<work_dir>/adapters/``.

    ``adapters/llm_adapter`` and ``adapters/vision_encoder_adapter`` (those that exist) load with
    plain ``PeftModel.from_pretrained``; they always hold the latest checkpoint's values. A new
    copy is written aside and swapped in by renames, so a kill never leaves a half-written
    adapter. Under ZeRO-3 the values are gathered from every rank first.
    """

    priority = "VERY_LOW"

    def before_save_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        vlm = unwrap(runner.model)
        adapted = [prefix for prefix in ADAPTER_DIRS if isinstance(vlm.get_submodule(prefix), PeftModel)]
        if not adapted:
            return
        trainable = {
            name
            for name, param in vlm.named_parameters()
            if param.requires_grad and any(name.startswith(f"{prefix}.") for prefix in adapted)
        }
        state = gathered_state(vlm, trainable)  # a collective under ZeRO-3: every rank calls it
        if not is_main_process():
            return
        with staged_directory(Path(runner.work_dir) / "adapters", "new") as staging:
            save_adapters(vlm, staging, state_dict=state)

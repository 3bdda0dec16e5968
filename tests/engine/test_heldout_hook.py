"""MultipleChoiceEvalHook on the demo's dev set: CircularEval next to vanilla, the circular figure last."""

import json
from types import SimpleNamespace

import pytest
from mmengine.logging import MessageHub

from vltool.data.demo_task import write_demo_dataset
from vltool.engine.hooks import MultipleChoiceEvalHook
from vltool.eval.mmbench_data import read_mmbench_tsv


class Logger:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, line: str) -> None:
        self.lines.append(line)


class PicturePipeline:
    """Knows each dev picture's answer; ``by_letter`` says the letter it had in the file, whatever the options say.

    ``by_letter`` is the fault the old demo had: its model tied each colour to one letter, which
    pass 0 rewards and every other rotation of the options exposes.
    """

    def __init__(self, tsv, by_letter: bool = False) -> None:
        table = read_mmbench_tsv(tsv)
        self.answers = {}
        for _, row in table.rows.iterrows():
            self.answers[table.image(row).tobytes()] = (row["answer"], row[row["answer"]])
        assert len(self.answers) == len(table.rows)  # no two pictures alike
        self.by_letter, self.prompts = by_letter, 0

    def answer(self, conversations, images, options=None):
        replies = []
        for conversation, (image,) in zip(conversations, images, strict=True):
            self.prompts += 1
            letter, text = self.answers[image.tobytes()]
            shown = {line[3:]: line[0] for line in conversation[-1].content.splitlines() if line[1:3] == ". "}
            replies.append(letter if self.by_letter else shown[text])
        return replies


@pytest.fixture(scope="module")
def dev_tsv(module_tmp):
    root = module_tmp("demo")
    write_demo_dataset(str(root), num_train=20, num_eval=24)
    return root / "dev.tsv"


def run_hook(tsv, pipeline, work_dir, **kwargs):
    hook = MultipleChoiceEvalHook(pipeline, str(tsv), batch_size=7, **kwargs)
    hub = MessageHub.get_instance(f"heldout-{work_dir.name}")
    runner = SimpleNamespace(rank=0, logger=Logger(), message_hub=hub, work_dir=str(work_dir))
    hook.after_train(runner)
    return runner, json.loads((work_dir / "heldout_accuracy.json").read_text())


def test_the_dev_set_is_scored_by_circular_eval(dev_tsv, tmp_path):
    pipeline = PicturePipeline(dev_tsv)
    runner, summary = run_hook(dev_tsv, pipeline, tmp_path)
    assert pipeline.prompts == 24 * 4  # each question once per rotation of its four options
    assert summary["mode"] == "circular" and summary["questions"] == 24 and summary["passes"] == 96
    assert summary["accuracy"] == summary["vanilla_accuracy"] == 1.0
    assert summary["chance"] == 0.25 and summary["circular_chance"] == pytest.approx(0.25**4)
    assert runner.message_hub.get_info("heldout_accuracy") == 1.0
    assert runner.message_hub.get_info("heldout_vanilla_accuracy") == 1.0
    lines = runner.logger.lines
    assert lines[:3] == [
        f"held-out accuracy [{kind}]: circular 100.0%, vanilla 100.0%" for kind in ("colour", "position", "shape")
    ]
    assert lines[-1].startswith(
        "held-out circular accuracy 100.0% (vanilla 100.0%) on 24 questions (dev.tsv, 96 prompts"
    )
    assert lines[-1].endswith("chance is 0.4% (vanilla 25%)")


def test_a_model_that_ties_answers_to_letters_scores_zero(dev_tsv, tmp_path):
    runner, summary = run_hook(dev_tsv, PicturePipeline(dev_tsv, by_letter=True), tmp_path)
    assert summary["vanilla_accuracy"] == 1.0 and summary["accuracy"] == 0.0
    assert summary["per_category"] == {"colour": 0.0, "position": 0.0, "shape": 0.0}
    assert summary["per_category_vanilla"] == {"colour": 1.0, "position": 1.0, "shape": 1.0}
    assert "held-out accuracy [colour]: circular 0.0%, vanilla 100.0%" in runner.logger.lines
    assert runner.logger.lines[-1].startswith("held-out circular accuracy 0.0% (vanilla 100.0%) on 24 questions")


def test_vanilla_alone_when_asked(dev_tsv, tmp_path):
    pipeline = PicturePipeline(dev_tsv, by_letter=True)
    runner, summary = run_hook(dev_tsv, pipeline, tmp_path, circular=False)
    assert pipeline.prompts == 24 and summary["mode"] == "vanilla" and summary["accuracy"] == 1.0
    assert runner.logger.lines[-1].startswith("held-out accuracy 100.0% on 24 questions (dev.tsv, vanilla")
    assert runner.logger.lines[0] == "held-out accuracy [colour]: 100.0%"

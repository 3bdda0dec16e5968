"""``run_mmbench`` and rescoring with a scripted model: numbers, files, resuming, test splits, errors."""

import json

import pandas as pd
import pytest
from rich.console import Console

from tests.eval.mmbench_files import ColourPipeline, colour_questions, write_tsv
from vltool.errors import ConfigError, DatasetError
from vltool.eval.circular import OFFSET, add_passes
from vltool.eval.mmbench import SUBMISSION_URL, heldout_accuracy, read_mmbench_tsv, rescore_mmbench, run_mmbench
from vltool.templates.multiple_choice import build_prompt

MODEL = {"model": "scripted"}


def run(tsv, work_dir, pipeline, **kwargs):
    console = Console(record=True, width=200)
    files = run_mmbench(lambda: pipeline, tsv, work_dir, "m", MODEL, console=console, **kwargs)
    return files, console.export_text()


@pytest.fixture
def dev_tsv(tmp_path):
    return write_tsv(tmp_path / "dev.tsv", colour_questions())


def test_circular_and_vanilla_scores_in_vlmevalkit_layout(dev_tsv, tmp_path):
    # never saying "D": right on every pass 0, wrong on question 0's pass 3 (its answer rotates to D)
    pipeline = ColourPipeline(avoid="D")
    files, shown = run(dev_tsv, tmp_path / "out", pipeline, batch_size=5)
    assert files.accuracy == tmp_path / "out" / "m_dev_acc.csv"
    accuracy = pd.read_csv(files.accuracy)
    assert list(accuracy.columns) == ["split", "Overall", "AR", "CP", "colour", "hue"]
    # question 0 fails one pass: circular 3/4 overall, 1/2 for its l2-category (AR) and category (colour)
    assert accuracy.iloc[0].tolist() == ["dev", 0.75, 0.5, 1.0, 0.5, 1.0]
    assert pd.read_csv(files.vanilla_accuracy).iloc[0].tolist() == ["dev", 1.0, 1.0, 1.0, 1.0, 1.0]
    # 4 + 3 + 3 ("None of the above" stays at D) + 2 passes
    predictions = pd.read_excel(files.predictions)
    assert len(predictions) == 12 and len(pipeline.prompts) == 12
    assert "image" not in predictions and {"prediction", "choice", "rule", "hit"} <= set(predictions.columns)
    assert predictions.set_index("index").loc[3 * OFFSET, ["answer", "prediction", "hit"]].tolist() == ["D", "A", 0]
    assert files.chart.stat().st_size > 1000 and files.submission is None
    assert (
        build_prompt(
            "What colour is the picture?",
            dict(zip("ABCD", ["red", "green", "blue", "yellow"], strict=True)),
            "Look closely.",
        )
        in pipeline.prompts
    )
    assert "12 questions" not in shown and "4 questions (CircularEval: 12 passes, built here)" in shown
    assert "0 of 12 answers unresolved (0 refused)" in shown
    assert "│ AR      │    50.00 │  100.00 │         2 │" in shown


def test_answers_are_read_with_every_rule(dev_tsv, tmp_path):
    files, shown = run(dev_tsv, tmp_path, ColourPipeline(style="It is {colour}."))  # the option's text
    assert pd.read_csv(files.accuracy)["Overall"].item() == 1.0 and "By rule: option text 12." in shown
    files, shown = run(dev_tsv, tmp_path / "2", ColourPipeline(style="Hmm."))
    assert pd.read_csv(files.accuracy)["Overall"].item() == 0.0
    assert "12 of 12 answers unresolved (0 refused), counted wrong" in shown


def test_a_killed_run_resumes_from_the_cache(dev_tsv, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(dev_tsv, tmp_path / "out", ColourPipeline(avoid="D", fail_after=2), batch_size=5)
    cache = tmp_path / "out" / "m_dev_cache" / "rank0.jsonl"
    assert len(cache.read_text().splitlines()) == 10  # two batches of five were saved
    resumed = ColourPipeline(avoid="D")
    files, _ = run(dev_tsv, tmp_path / "out", resumed, batch_size=5)
    assert len(resumed.prompts) == 2  # only the rest were answered
    uninterrupted, _ = run(dev_tsv, tmp_path / "fresh", ColourPipeline(avoid="D"), batch_size=5)
    pd.testing.assert_frame_equal(pd.read_excel(files.predictions), pd.read_excel(uninterrupted.predictions))
    # a line cut short by the kill is skipped; its row is answered again
    cache.write_text(cache.read_text() + '{"key": "3", "dig')
    again = ColourPipeline(avoid="D")
    run(dev_tsv, tmp_path / "out", again)
    assert again.prompts == []


def test_cached_answers_are_kept_only_for_the_same_model_and_prompt(dev_tsv, tmp_path):
    run(dev_tsv, tmp_path, ColourPipeline())
    with pytest.raises(ConfigError, match="cached answers were made with max_new_tokens=128, this run has 4; use"):
        run(dev_tsv, tmp_path, ColourPipeline(), max_new_tokens=4)
    assert len((tmp_path / "m_dev_cache" / "rank0.jsonl").read_text().splitlines()) == 12  # nothing lost
    rows = colour_questions()
    rows[3]["image"] = rows[0]["image"]  # question 3 now shows another picture: its passes are asked again
    again = ColourPipeline()
    run(write_tsv(dev_tsv, rows), tmp_path, again)
    assert len(again.prompts) == 2


def test_passes_in_the_file_score_like_passes_built_here(dev_tsv, tmp_path):
    built, _ = run(dev_tsv, tmp_path / "a", ColourPipeline(avoid="D"))
    table = read_mmbench_tsv(dev_tsv)
    passes = add_passes(table.rows)
    # VLMEvalKit's layout: rotated rows name the original's index instead of repeating the image
    passes["image"] = [
        table.images[i] if i == j else str(j) for i, j in zip(passes["index"], passes["image_index"], strict=True)
    ]
    circular = write_tsv(dev_tsv.with_name("dev_circular.tsv"), passes.drop(columns="image_index").to_dict("records"))
    given, shown = run(circular, tmp_path / "b", ColourPipeline(avoid="D"))
    assert "CircularEval: 12 passes, from the file" in shown
    assert pd.read_csv(given.accuracy).equals(pd.read_csv(built.accuracy))
    vanilla, shown = run(circular, tmp_path / "c", ColourPipeline(avoid="D"), circular=False)
    assert "vanilla: pass 0 only" in shown and pd.read_csv(vanilla.accuracy)["Overall"].item() == 1.0


def test_test_split_writes_the_submission(tmp_path):
    rows = colour_questions()
    for row in rows:
        del row["answer"]
    tsv = write_tsv(tmp_path / "MMBench_TEST_EN.tsv", rows)
    files, shown = run(tsv, tmp_path, ColourPipeline())
    submission = pd.read_excel(files.submission)
    expected = [c for c in pd.read_csv(tsv, sep="\t").columns if c != "image"] + ["prediction"]
    assert list(submission.columns) == expected and len(submission) == 12
    assert files.accuracy is None and f"submit {files.submission} at {SUBMISSION_URL}" in shown


def test_saved_predictions_rescore_without_a_model(dev_tsv, tmp_path):
    files, _ = run(dev_tsv, tmp_path / "run", ColourPipeline(avoid="D"))
    console = Console(record=True, width=200)
    saved = files.predictions.read_bytes()
    rescored = rescore_mmbench(files.predictions, dev_tsv, None, True, console)
    assert rescored.predictions == tmp_path / "run" / "m_dev_scored.xlsx" and files.predictions.read_bytes() == saved
    assert pd.read_csv(rescored.accuracy).equals(pd.read_csv(files.accuracy))
    # a predictions file with only pass 0 cannot give CircularEval; it can give vanilla accuracy
    originals = pd.read_excel(files.predictions).query(f"index < {OFFSET}")
    originals.to_csv(tmp_path / "pass0.csv", index=False)
    with pytest.raises(
        DatasetError,
        match=r"8 question\(s\) of dev.tsv have no prediction \(1000000, 1000001, "
        r"1000002, 1000003, 2000000, \.\.\.\); .* or add --no-circular",
    ):
        rescore_mmbench(tmp_path / "pass0.csv", dev_tsv, None, True, console)
    vanilla = rescore_mmbench(tmp_path / "pass0.csv", dev_tsv, None, False, console)
    assert pd.read_csv(vanilla.accuracy)["Overall"].item() == 1.0 and vanilla.accuracy.parent == tmp_path
    originals.assign(index=originals["index"] + 100).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(
        DatasetError,
        match=r"other.csv: 4 question\(s\) .*; 4 prediction\(s\) are not in dev.tsv "
        r"\(100, 101, 102, 103\); score it against the TSV it was made from.",
    ):
        rescore_mmbench(tmp_path / "other.csv", dev_tsv, None, False, console)
    originals.drop(columns="prediction").to_csv(tmp_path / "none.csv", index=False)
    with pytest.raises(DatasetError, match="none.csv: missing column\\(s\\) prediction; it needs index and prediction"):
        rescore_mmbench(tmp_path / "none.csv", dev_tsv, None, False, console)


def test_heldout_accuracy_for_the_training_hook(dev_tsv):
    pipeline = ColourPipeline(style="{letter}")
    result = heldout_accuracy(pipeline, dev_tsv, batch_size=3)
    assert len(pipeline.prompts) == 12  # CircularEval by default: every pass, built here as vltool mmbench does
    assert result.scored.circular and result.accuracy == result.vanilla_accuracy == 1.0
    assert result.per_category() == result.per_category(vanilla=True) == {"colour": 1.0, "hue": 1.0}
    assert result.chance == pytest.approx((1 / 4 + 1 / 3 + 1 / 4 + 1 / 2) / 4)
    # guessing right on every pass: 4 options x 4 passes, 3 x 3, 4 x 3 ("None of the above" stays), 2 x 2
    assert result.circular_chance == pytest.approx((4**-4 + 3**-3 + 4**-3 + 2**-2) / 4)
    summary = result.to_dict()
    assert summary["questions"] == 4 and summary["passes"] == 12 and summary["unresolved"] == 0
    assert summary["mode"] == "circular" and summary["accuracy"] == summary["vanilla_accuracy"] == 1.0
    assert json.dumps(summary)  # written as JSON by the hook


def test_heldout_accuracy_circular_next_to_vanilla(dev_tsv):
    # never saying "D": right on every pass 0, wrong on question 0's pass 3
    result = heldout_accuracy(ColourPipeline(avoid="D"), dev_tsv, batch_size=5)
    assert result.accuracy == 0.75 and result.vanilla_accuracy == 1.0
    assert result.per_category() == {"colour": 0.5, "hue": 1.0}
    assert result.per_category(vanilla=True) == {"colour": 1.0, "hue": 1.0}
    vanilla = heldout_accuracy(ColourPipeline(avoid="D"), dev_tsv, circular=False)
    assert not vanilla.scored.circular and vanilla.passes == 4
    assert vanilla.accuracy == vanilla.vanilla_accuracy == 1.0 and vanilla.circular_chance == vanilla.chance

import json
import math
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from vltool.errors import ConfigError, DatasetError
from vltool.eval.benchmarks.refcoco import BENCHMARK, decide, load, score
from vltool.eval.evaluate import check_rules, rescore_eval
from vltool.eval.grounding_rules import (
    box_iou,
    llava_decision,
    llava_fractions,
    padded_square_to_pixels,
    qwen_vl_corners,
    qwen_vl_decision,
)

IMAGE = "coco/train2014/COCO_train2014_000000581857.jpg"
GT_BOX = [20, 10, 120, 60]  # x1, y1, x2, y2 in pixels of a 200 x 100 image

OFFICIAL = Path(__file__).parents[2] / "assets" / "benchmarks" / "official" / "refcoco"
"""Qwen-VL's evaluate_grounding.py run on a synthetic split and 51 answers (see its README.md)."""


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


OFFICIAL_DATA = _read_jsonl(OFFICIAL / "refcoco_val.jsonl")
OFFICIAL_ANSWERS = _read_jsonl(OFFICIAL / "answers.jsonl")
OFFICIAL_RESULT = json.loads((OFFICIAL / "official_decisions.json").read_text(encoding="utf-8"))


def _line(sent: str, **extra) -> str:
    return json.dumps({"image": IMAGE, "sent": sent, "bbox": GT_BOX, "height": 100, "width": 200, **extra})


def _write(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "data"
    (root / IMAGE).parent.mkdir(parents=True)
    Image.new("RGB", (200, 100)).save(root / IMAGE)
    return root


@pytest.fixture
def splits(tmp_path):
    """A folder with two Qwen-VL grounding files: refcoco_val (4 lines) and refcoco_testA (3 lines)."""
    folder = tmp_path / "refcoco"
    _write(folder / "refcoco_val.jsonl", *(_line(f"val {i}") for i in range(4)))
    _write(folder / "refcoco_testA.jsonl", *(_line(f"testA {i}") for i in range(3)))
    return folder


@pytest.fixture
def official_images(tmp_path):
    """Blank images at the paths the official fixture's split names, at its sizes."""
    root = tmp_path / "official_images"
    for record in OFFICIAL_DATA:
        path = root / record["image"]
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (record["width"], record["height"])).save(path)
    return root


# --- official rules: Qwen-VL's evaluate_grounding.py, item for item ---


@pytest.mark.parametrize("index", range(len(OFFICIAL_ANSWERS)), ids=[a["key"] for a in OFFICIAL_ANSWERS])
def test_official_decision_matches_qwen_vl_scorer(index):
    record, answer, expected = OFFICIAL_DATA[index], OFFICIAL_ANSWERS[index], OFFICIAL_RESULT["items"][index]
    decision = qwen_vl_decision(answer["prediction"], tuple(record["bbox"]), record["width"], record["height"])
    # the same float32 box and IoU bit for bit ("nan"/"inf" stored as text, a NaN IoU as null)
    expected_box = [float(value) for value in expected["box"]]
    assert all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(decision.box, expected_box, strict=True))
    assert math.isnan(decision.iou) if expected["iou"] is None else decision.iou == expected["iou"]
    assert decision.hit is expected["hit"], answer["case"]


def test_official_score_matches_qwen_vl_scorer(official_images, tmp_path):
    console = Console(record=True, width=200)
    files = rescore_eval(
        BENCHMARK, OFFICIAL / "answers.jsonl", OFFICIAL / "refcoco_val.jsonl", official_images, tmp_path, console
    )
    # Qwen-VL printed "Precision @ 1: 0.43137254901960786" (22 of 51)
    assert OFFICIAL_RESULT["correct"] == 22 and OFFICIAL_RESULT["total"] == 51
    assert files.scores.summary == {"accuracy": 100 * OFFICIAL_RESULT["precision_at_1"]}
    assert files.scores.table.loc["refcoco_val", "questions"] == 51
    text = console.export_text()
    assert "scoring rules: official (Qwen-VL's eval_mm/evaluate_grounding.py" in text
    assert "14 of 51 answers had no (x1,y1),(x2,y2) box Qwen-VL's scorer reads" in text


def test_fixture_needs_float32_and_999():
    """The borderline answers in the fixture flip with float64 arithmetic or a 1000 divisor."""
    flipped = {}
    for record, answer, expected in zip(OFFICIAL_DATA, OFFICIAL_ANSWERS, OFFICIAL_RESULT["items"], strict=True):
        corners = qwen_vl_corners(answer["prediction"])
        if corners is None or not all(map(math.isfinite, corners)):
            continue
        width, height = record["width"], record["height"]
        for divisor in (999, 1000):
            box = (corners[0] / divisor * width, corners[1] / divisor * height)
            box += (corners[2] / divisor * width, corners[3] / divisor * height)
            if (box_iou(box, tuple(record["bbox"])) >= 0.5) != expected["hit"]:
                flipped.setdefault(answer["key"], []).append(divisor)
    # float64 at /999 flips lines 40 and 41 (float32 IoU 0.50000006 and 0.49999994); /1000 flips 42 and 43
    assert flipped == {
        "refcoco_val/40": [999, 1000],
        "refcoco_val/41": [999, 1000],
        "refcoco_val/42": [1000],
        "refcoco_val/43": [1000],
    }


@pytest.mark.parametrize(
    ("answer", "corners"),
    [
        ("(1,2),(3,4)</box>", (1.0, 2.0, 3.0, 4.0)),
        ("<ref>a</ref><box>(1.5, 2),( 3 ,-4)</box>", (1.5, 2.0, 3.0, -4.0)),
        ("(1,2), (3,4)", None),  # nothing may stand between "),(": no match
        ("see (a) and (1,2),(3,4)", None),  # the first "(" starts the match: "a) and (1,2" is no number pair
        ("(x1,y1),(x2,y2) = (1,2),(3,4)", None),  # a later box is never tried
        ("(1,2,3),(4,5)", None),
        ("(1,2),\n(3,4)", None),
        ("", None),
    ],
)
def test_official_corners(answer, corners):
    assert qwen_vl_corners(answer) == corners


def test_official_scales_by_999_and_the_annotation_size():
    # (999, 999) is the far corner; the annotation's width may be fractional and is used as given
    decision = qwen_vl_decision("(0,0),(999,999)", (0.0, 0.0, 427.5, 300.0), 427.5, 300)
    assert decision.box == (0.0, 0.0, 427.5, 300.0) and decision.iou == 1.0 and decision.hit


def test_official_reversed_corners_miss():
    decision = qwen_vl_decision("(600,600),(100,100)", (20.0, 10.0, 120.0, 60.0), 200, 100)
    assert decision.read and decision.iou == 0.0 and not decision.hit


# --- llava rules: [x1, y1, x2, y2] fractions of the centred padded square ---


@pytest.mark.parametrize(
    ("size", "pixels"),
    [
        # 640 x 427: side 640, the image pasted at y = (640 - 427) // 2 = 106
        ((640, 427), (160.0, 320.0 - 106, 480.0, 480.0 - 106)),
        # 427 x 640: pasted at x = 106
        ((427, 640), (160.0 - 106, 320.0, 480.0 - 106, 480.0)),
        # 333 x 500: side 500, pasted at x = 167 // 2 = 83; fractions * 500 = 125, 250, 375, 375
        ((333, 500), (125.0 - 83, 250.0, 375.0 - 83, 375.0)),
        ((500, 500), (125.0, 250.0, 375.0, 375.0)),
    ],
)
def test_padded_square_to_pixels(size, pixels):
    fractions = (0.25, 0.5, 0.75, 0.75)
    assert padded_square_to_pixels(fractions, *size) == pytest.approx(pixels, abs=1e-9)


@pytest.mark.parametrize(
    ("answer", "fractions"),
    [
        ("[0.12, 0.34, 0.56, 0.78]", (0.12, 0.34, 0.56, 0.78)),
        ("The box is [.1,0.2 , 1, -0.05].", (0.1, 0.2, 1.0, -0.05)),
        ("[0.1, 0.2, 0.3, 0.4] and [0.5, 0.6, 0.7, 0.8]", (0.1, 0.2, 0.3, 0.4)),
        ("[0.1, 0.2, 0.3]", None),
        ("[0.1, 0.2, 0.3, 0.4, 0.5]", None),
        ("(0.1,0.2),(0.3,0.4)", None),
        ("", None),
    ],
)
def test_llava_fractions(answer, fractions):
    assert llava_fractions(answer) == fractions


def test_llava_decisions_on_a_padded_landscape_image():
    # 640 x 427 is padded to 640 x 640 with 106 rows above; on the square the truth is x 0.1..0.5,
    # y (100 + 106) / 640 .. (300 + 106) / 640
    truth = (64.0, 100.0, 320.0, 300.0)
    exact = llava_decision(f"[0.1, {206 / 640}, 0.5, {406 / 640}]", truth, 640, 427)
    assert exact.box == pytest.approx(truth) and exact.iou == pytest.approx(1.0) and exact.hit
    # fractions of the unpadded image (y / 427) read on the square: y 100 / 427 * 640 - 106 = 43.9 .. 343.6
    unpadded = llava_decision(f"[0.1, {100 / 427}, 0.5, {300 / 427}]", truth, 640, 427)
    assert unpadded.box == pytest.approx((64.0, 100 / 427 * 640 - 106, 320.0, 300 / 427 * 640 - 106))
    assert unpadded.iou == pytest.approx(200 / (200 / 427 * 640))  # 0.667: same width, 200 of 299.8 rows
    strip = (64.0, 100.0, 320.0, 130.0)  # 30 rows: the unpadded fractions (y 43.9..88.9) miss it entirely
    assert llava_decision(f"[0.1, {100 / 427}, 0.5, {130 / 427}]", strip, 640, 427).iou == 0.0
    assert llava_decision(f"[0.1, {206 / 640}, 0.5, {236 / 640}]", strip, 640, 427).hit
    reversed_box = llava_decision(f"[0.5, {406 / 640}, 0.1, {206 / 640}]", truth, 640, 427)
    assert reversed_box.read and reversed_box.iou == 0.0 and not reversed_box.hit
    no_box = llava_decision("(64,100),(320,300)", truth, 640, 427)
    assert (no_box.box, no_box.iou, no_box.hit, no_box.read) == (None, 0.0, False, False)


def test_llava_rules_score(splits, images):
    samples = load(splits / "refcoco_testA.jsonl", images)
    # 200 x 100 padded to 200 x 200 with 50 rows above: the truth [20, 10, 120, 60] is [0.1, 0.3, 0.6, 0.55]
    predictions = {
        "refcoco_testA/1": "[0.1, 0.3, 0.6, 0.55]",  # IoU 1: hit
        "refcoco_testA/2": "[0.1, 0.05, 0.6, 0.3]",  # y / 200 without the 50-row offset: y -40..10, IoU 0: miss
        "refcoco_testA/3": "<box>(100,100),(600,600)</box>",  # no [..] box: miss
    }
    scores = score(samples, predictions, "llava")
    assert scores.summary == {"accuracy": pytest.approx(100 / 3)}
    assert scores.notes == ["1 of 3 answers had no box of four numbers in square brackets (misses)"]


def test_llava_rules_on_the_official_answers(official_images, tmp_path):
    console = Console(record=True, width=200)
    data, answers = OFFICIAL / "refcoco_val.jsonl", OFFICIAL / "answers.jsonl"
    files = rescore_eval(BENCHMARK, answers, data, official_images, tmp_path, console, "llava")
    # only line 12, [0.24, 0.47, 0.56, 0.75] on the 427 x 640 image (106 columns of padding left), is a LLaVA box:
    # x 0.24 * 640 - 106 = 47.6 .. 252.4, y 300.8 .. 480 against [103.93, 299.99, 238.15, 477.41]: IoU 0.64, a hit
    assert files.scores.summary == {"accuracy": pytest.approx(100 / 51)}
    text = console.export_text()
    assert "scoring rules: llava (LLaVA-1.5 boxes: x1, y1, x2, y2 in square brackets, fractions of the centred" in text
    assert "50 of 51 answers had no box of four numbers in square brackets (misses)" in text


def test_rule_sets():
    assert list(BENCHMARK.rules) == ["official", "llava"]
    assert check_rules(BENCHMARK, None) == "official" and check_rules(BENCHMARK, "llava") == "llava"
    with pytest.raises(ConfigError, match="refcoco has no rule set 'vlmevalkit'; choose one of official, llava"):
        decide("(1,2),(3,4)", {"box": (0, 0, 1, 1), "width": 10, "height": 10}, "vlmevalkit")


# --- box_iou ---


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0  # disjoint
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges
    assert box_iou((0, 0, 10, 10), (0, 0, 5, 10)) == 0.5  # 50 / 100
    assert box_iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert box_iou((3, 3, 3, 3), (3, 3, 3, 3)) == 0.0  # both empty: no union


# --- load ---


def test_load_one_file(splits, images):
    samples = load(splits / "refcoco_val.jsonl", images)
    assert [s.key for s in samples] == ["refcoco_val/1", "refcoco_val/2", "refcoco_val/3", "refcoco_val/4"]
    expected = (
        "<image>\nPlease provide the bounding box coordinate of the region this sentence describes: <ref>val 0</ref>"
    )
    assert samples[0].prompt == expected
    assert samples[0].images == (images / IMAGE,)
    assert samples[0].reference == {
        "split": "refcoco_val",
        "box": (20.0, 10.0, 120.0, 60.0),
        "width": 200,
        "height": 100,
    }


def test_load_folder_reads_every_split_in_name_order(splits, images):
    samples = load(splits, images)
    assert [s.key for s in samples][:4] == ["refcoco_testA/1", "refcoco_testA/2", "refcoco_testA/3", "refcoco_val/1"]
    assert len(samples) == 7


def test_size_read_from_image_when_absent(tmp_path, images):
    record = {"image": IMAGE, "sent": "x", "bbox": GT_BOX}
    samples = load(_write(tmp_path / "s.jsonl", json.dumps(record)), images)
    assert (samples[0].reference["width"], samples[0].reference["height"]) == (200, 100)


# --- score ---


def test_score_per_split_and_overall(splits, images):
    samples = load(splits, images)
    # on a 200 x 100 image the grid (100,100),(600,600) is [20.02, 10.01, 120.12, 60.06] (divided by 999)
    exact = "<ref>x</ref><box>(100,100),(600,600)</box>"
    predictions = {
        "refcoco_val/1": exact,  # IoU 0.997: hit
        "refcoco_val/2": "(100,100),(350,600)</box>",  # [20.02,10.01,70.07,60.06]: 2502 / 5003 = 0.5001: hit
        "refcoco_val/3": "<box>(100,100),(340,600)</box>",  # [20.02,10.01,68.07,60.06]: 2402 / 5003 = 0.480: miss
        "refcoco_val/4": "I don't know",  # no box: miss
        "refcoco_testA/1": exact,  # hit
        "refcoco_testA/2": "<box>(0,0),(50,50)</box>" + exact,  # only the first box counts: miss
        "refcoco_testA/3": exact + " <box>(0,0),(50,50)</box>",  # hit
    }
    scores = score(samples, predictions)
    # testA 2/3 = 66.67, val 2/4 = 50, overall 4/7 = 57.14
    assert list(scores.table.index) == ["refcoco_testA", "refcoco_val", "overall"]
    assert scores.table.loc["refcoco_testA", "accuracy"] == pytest.approx(200 / 3)
    assert scores.table.loc["refcoco_val", "accuracy"] == 50.0
    assert scores.table.loc["overall", "accuracy"] == pytest.approx(400 / 7)
    assert scores.table["questions"].to_dict() == {"refcoco_testA": 3, "refcoco_val": 4, "overall": 7}
    assert scores.summary == {"accuracy": pytest.approx(400 / 7)}
    assert scores.chart == {"refcoco_testA": pytest.approx(200 / 3), "refcoco_val": 50.0}
    assert scores.notes == [
        "1 of 7 answers had no (x1,y1),(x2,y2) box Qwen-VL's scorer reads (scored as (0,0),(0,0): misses)"
    ]


def test_one_split_has_no_overall_row(splits, images):
    samples = load(splits / "refcoco_testA.jsonl", images)
    exact = "<box>(100,100),(600,600)</box>"
    scores = score(samples, {"refcoco_testA/1": exact, "refcoco_testA/2": exact, "refcoco_testA/3": "left"})
    # 2 of 3 -> 66.67
    assert list(scores.table.index) == ["refcoco_testA"]
    assert scores.summary == {"accuracy": pytest.approx(200 / 3)}
    assert scores.notes == [
        "1 of 3 answers had no (x1,y1),(x2,y2) box Qwen-VL's scorer reads (scored as (0,0),(0,0): misses)"
    ]


def test_box_scaled_by_the_original_image_size(tmp_path, images):
    # the same grid box on a 1000 x 500 image is [100.1, 50.05, 600.6, 300.3]
    record = {"image": IMAGE, "sent": "x", "bbox": [100, 50, 600, 300], "width": 1000, "height": 500}
    samples = load(_write(tmp_path / "s.jsonl", json.dumps(record)), images)
    assert score(samples, {"s/1": "<box>(100,100),(600,600)</box>"}).summary == {"accuracy": 100.0}
    assert decide("(100,100),(600,600)", samples[0].reference).box == pytest.approx((100.1, 50.05, 600.6, 300.3))


def test_benchmark_settings():
    assert BENCHMARK.name == "refcoco"
    assert BENCHMARK.max_new_tokens == 64


# --- bad input ---


def test_image_folder_is_required(splits):
    with pytest.raises(DatasetError, match="--image-folder"):
        load(splits, None)


def test_missing_key_names_file_and_line(tmp_path, images):
    path = _write(tmp_path / "s.jsonl", _line("ok"), json.dumps({"image": IMAGE, "bbox": GT_BOX}))
    with pytest.raises(DatasetError, match=r"s\.jsonl:2: missing key\(s\) sent"):
        load(path, images)


def test_missing_image_names_line_and_path(tmp_path):
    path = _write(tmp_path / "s.jsonl", _line("x"))
    with pytest.raises(DatasetError, match=r"s\.jsonl:1: image .*COCO_train2014_000000581857\.jpg not found"):
        load(path, tmp_path)


@pytest.mark.parametrize("bbox", [[1, 2, 3], "1,2,3,4", [10, 10, 5, 20]])
def test_malformed_box(tmp_path, images, bbox):
    path = _write(tmp_path / "s.jsonl", _line("x", bbox=bbox))
    with pytest.raises(DatasetError, match=r"s\.jsonl:1: 'bbox'"):
        load(path, images)


def test_line_that_is_not_an_object(tmp_path, images):
    path = _write(tmp_path / "s.jsonl", "[1, 2]")
    with pytest.raises(DatasetError, match=r"s\.jsonl:1: expected a JSON object"):
        load(path, images)


def test_folder_without_files(tmp_path, images):
    with pytest.raises(DatasetError, match="no .jsonl files"):
        load(tmp_path, images)

import json
from pathlib import Path

import pytest
from PIL import Image

from vltool.errors import DatasetError
from vltool.eval.benchmarks.refcoco import BENCHMARK, box_iou, load, score

IMAGE = "coco/train2014/COCO_train2014_000000581857.jpg"
GT_BOX = [20, 10, 120, 60]  # x1, y1, x2, y2 in pixels of a 200 x 100 image


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
    # on a 200 x 100 image the grid (100,100),(600,600) is [20, 10, 120, 60]: the ground truth itself
    exact = "<ref>x</ref><box>(100,100),(600,600)</box>"
    predictions = {
        "refcoco_val/1": exact,  # IoU 1: hit
        "refcoco_val/2": "<box>(100,100),(350,600)</box>",  # [20,10,70,60]: 2500 / 5000 = 0.5: hit
        "refcoco_val/3": "<box>(100,100),(340,600)</box>",  # [20,10,68,60]: 2400 / 5000 = 0.48: miss
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
    assert scores.notes == ["1 of 7 answers had no box (counted as misses)"]


def test_one_split_has_no_overall_row(splits, images):
    samples = load(splits / "refcoco_testA.jsonl", images)
    exact = "<box>(100,100),(600,600)</box>"
    scores = score(samples, {"refcoco_testA/1": exact, "refcoco_testA/2": exact, "refcoco_testA/3": "left"})
    # 2 of 3 -> 66.67
    assert list(scores.table.index) == ["refcoco_testA"]
    assert scores.summary == {"accuracy": pytest.approx(200 / 3)}


def test_box_scaled_by_the_original_image_size(tmp_path, images):
    # the same grid box on a 1000 x 500 image is [100, 50, 600, 300]
    record = {"image": IMAGE, "sent": "x", "bbox": [100, 50, 600, 300], "width": 1000, "height": 500}
    samples = load(_write(tmp_path / "s.jsonl", json.dumps(record)), images)
    assert score(samples, {"s/1": "<box>(100,100),(600,600)</box>"}).summary == {"accuracy": 100.0}


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

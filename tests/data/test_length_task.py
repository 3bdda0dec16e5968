"""The length-skewed benchmark data: every kind of sample, readable by vltool, lengths spread wide."""

import json
from collections import Counter

from vltool.data.formats import load_samples
from vltool.data.length_task import KINDS, write_length_dataset


def test_every_kind_is_written_and_reads_back(tmp_path):
    write_length_dataset(str(tmp_path), num_train=300)
    records = json.loads((tmp_path / "train.json").read_text())
    kinds = Counter(record["id"].rsplit("-", 1)[0] for record in records)
    assert set(kinds) == set(KINDS) and kinds["short"] > 150
    samples = {sample.sample_id: sample for sample in load_samples(tmp_path / "train.json")}
    for record in records:
        sample = samples[record["id"]]
        images = record.get("image", [])
        images = [images] if isinstance(images, str) else images
        assert len(sample.images) == len(images) and all((tmp_path / image).is_file() for image in images)
        if record["id"].startswith("several_images"):
            assert 3 <= len(images) <= 6
        if record["id"].startswith("vqa_turns"):
            assert 10 <= len(record["conversations"]) <= 20
    stamp = (tmp_path / "length_dataset.json").stat().st_mtime_ns
    write_length_dataset(str(tmp_path), num_train=300)  # the same settings: nothing rewritten
    assert (tmp_path / "length_dataset.json").stat().st_mtime_ns == stamp

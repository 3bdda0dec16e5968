"""The command line as a user meets it: exit codes, one-line errors, check-dataset reports."""

import json
import subprocess
import sys

from PIL import Image


def vltool(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vltool", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_unknown_config_one_line_error():
    result = vltool("train", "demoo")
    assert result.returncode == 1
    assert "error: config 'demoo' is neither a file nor a shipped config name. Did you mean: demo?" in result.stderr
    assert "Traceback" not in result.stderr


def test_list_and_copy_cfg(tmp_path):
    listed = vltool("list-cfg", "-p", "qlora")
    assert listed.returncode == 0
    names = listed.stdout.split()
    assert len(names) == 8 and all("qlora" in n for n in names)  # Qwen2.5 x3 and Qwen3-0.6B, CLIP and SigLIP each
    assert vltool("list-cfg", "-p", "no-such-thing").returncode == 1
    copied = vltool("copy-cfg", "demo", str(tmp_path))
    assert copied.returncode == 0 and (tmp_path / "demo.py").is_file()


def test_copy_cfg_prints_the_whole_path(tmp_path):
    # longer than a piped console's 80 columns, with brackets that rich would read as markup
    dest = tmp_path / ("x" * 90) / "cfg[ut]"
    copied = vltool("copy-cfg", "demo", str(dest))
    assert copied.returncode == 0, copied.stderr
    assert f"copied demo to {dest / 'demo.py'}" in copied.stdout.splitlines()


def tiny_demo_options(data):
    return [
        "--cfg-options",
        f"train_dataloader.dataset.data_path={data / 'd.json'}",
        f"train_dataloader.dataset.image_folder={data}",
        "train_dataloader.dataset.max_length=120",
    ]


def test_check_dataset_lists_every_problem(tmp_path):
    Image.new("RGB", (20, 20), "blue").save(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG broken")
    ask = {"from": "human", "value": "<image>\nColour?"}
    records = [
        {"id": "good", "image": "ok.png", "conversations": [ask, {"from": "gpt", "value": "Blue."}]},
        {"id": "long", "image": "ok.png", "conversations": [ask, {"from": "gpt", "value": "blue " * 60}]},
        {"id": "gone", "image": "missing.png", "conversations": [ask, {"from": "gpt", "value": "?"}]},
        {"id": "broken", "image": "corrupt.png", "conversations": [ask, {"from": "gpt", "value": "?"}]},
        {"id": "tags", "image": ["ok.png", "ok.png"], "conversations": [ask, {"from": "gpt", "value": "?"}]},
        {"id": "mute", "conversations": [{"from": "human", "value": "hi"}]},
    ]
    (tmp_path / "d.json").write_text(json.dumps(records))
    result = vltool("check-dataset", "demo", *tiny_demo_options(tmp_path), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    out = " ".join(result.stdout.split())
    assert "d.json: sample gone:" in out and "missing.png: image file not found" in out
    assert "d.json: sample broken:" in out and "cannot decode image" in out
    assert "sample tags: 1 '<image>' tag(s) but 2 image(s)" in out
    assert "sample mute: conversation has no assistant turn" in out
    assert "longer than max_length=120 │ 1 (truncate)" in out or "longer than max_length=120 1" in out
    assert "sample good" not in out


def test_check_dataset_clean_exits_zero(tmp_path):
    Image.new("RGB", (20, 20), "blue").save(tmp_path / "ok.png")
    record = {
        "image": "ok.png",
        "conversations": [{"from": "human", "value": "<image>\nC?"}, {"from": "gpt", "value": "Blue."}],
    }
    (tmp_path / "d.json").write_text(json.dumps([record] * 3))
    result = vltool("check-dataset", "demo", *tiny_demo_options(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "problems" in result.stdout
    assert not (tmp_path / "data").exists()  # the demo's own dataset is not what was checked, so not written


def test_prepare_dataset_with_other_data_writes_no_demo_data(tmp_path):
    Image.new("RGB", (20, 20), "blue").save(tmp_path / "ok.png")
    record = {
        "image": "ok.png",
        "conversations": [{"from": "human", "value": "<image>\nC?"}, {"from": "gpt", "value": "Blue."}],
    }
    (tmp_path / "d.json").write_text(json.dumps([record] * 3))
    options = [*tiny_demo_options(tmp_path), "--cache-dir", str(tmp_path / "cache")]
    result = vltool("prepare-dataset", "demo", *options, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "prepared dataset:" in result.stdout
    assert not (tmp_path / "data").exists()


def test_check_dataset_no_decode_only_looks_for_files(tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG broken")
    ask = {"from": "human", "value": "<image>\nColour?"}
    records = [
        {"id": "broken", "image": "corrupt.png", "conversations": [ask, {"from": "gpt", "value": "?"}]},
        {"id": "gone", "image": "missing.png", "conversations": [ask, {"from": "gpt", "value": "?"}]},
    ]
    (tmp_path / "d.json").write_text(json.dumps(records))
    options = ["--no-decode", "--num-proc", "1", *tiny_demo_options(tmp_path)]
    result = vltool("check-dataset", "demo", *options, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    out = " ".join(result.stdout.split())
    assert "sample gone:" in out and "missing.png" in out
    assert "sample broken" not in out  # it exists; only decoding would find it broken
    assert (
        vltool("check-dataset", "demo", "--num-proc", "0", *tiny_demo_options(tmp_path), cwd=tmp_path).returncode == 2
    )


def test_train_bad_dataset_is_one_line(tmp_path):
    (tmp_path / "d.json").write_text('[{"conversations": [}]')
    result = vltool("train", "demo", *tiny_demo_options(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert "d.json:1: invalid JSON" in result.stderr
    assert "Traceback" not in result.stderr
    debug = vltool("--debug", "train", "demo", *tiny_demo_options(tmp_path), cwd=tmp_path)
    assert "Traceback" in debug.stderr


def test_cfg_option_typo(tmp_path):
    result = vltool("train", "demo", "--cfg-options", "train_cfg.max_iter=3", "trian_cfg.x=1")
    assert result.returncode == 1
    assert "nothing reads 'trian_cfg'" in result.stderr

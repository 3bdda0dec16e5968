"""A bad sample met in a dataloader worker stops `vltool train` with one line naming it."""

import json
import subprocess
import sys

from PIL import Image


def vltool(*args, cwd):
    return subprocess.run([sys.executable, "-m", "vltool", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_image_broken_after_preparing_is_one_line_from_a_worker(tmp_path):
    for name in ("r.png", "b.png"):
        Image.new("RGB", (64, 64), "red").save(tmp_path / name)
    ask = {"from": "human", "value": "<image>\nColour?"}
    records = [
        {
            "id": f"s{i}",
            "image": "b.png" if i == 5 else "r.png",
            "conversations": [ask, {"from": "gpt", "value": "Red."}],
        }
        for i in range(8)
    ]
    (tmp_path / "d.json").write_text(json.dumps(records))
    options = [
        "--cfg-options",
        f"train_dataloader.dataset.data_path={tmp_path / 'd.json'}",
        f"train_dataloader.dataset.image_folder={tmp_path}",
        f"train_dataloader.dataset.cache_dir={tmp_path / 'cache'}",
        "train_dataloader.num_workers=2",
        "train_dataloader.batch_size=4",
        "train_cfg.max_iters=4",
        "custom_hooks=[]",
        "data_preparation=None",
    ]
    prepared = vltool("prepare-dataset", "demo", *options, cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr
    (tmp_path / "b.png").write_bytes(b"broken after preparing")
    result = vltool("train", "demo", "--work-dir", str(tmp_path / "work"), *options, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "DataLoader worker" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: d.json: sample s5: ") and "b.png: cannot decode image" in last

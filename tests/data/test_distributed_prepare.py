"""Rank 0 prepares, rank 1 maps the same files: two gloo processes on the CPU."""

import json
import os
import socket
import time
from functools import partial

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_image_processor
from PIL import Image

import vltool.data.dataset as dataset_module
from vltool.data.dataset import VisionLanguageDataset
from vltool.data.distributed import broadcast_from_rank0, build_dataset_once
from vltool.errors import ConfigError, DatasetError
from vltool.model.tokenizer import add_image_token, load_qwen2_tokenizer
from vltool.templates import load_template


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank, port, worker, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), VLTOOL_CACHE_DIR=str(out / "cache"))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        result = worker(rank, out)
    finally:
        dist.destroy_process_group()
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def run_two_ranks(worker, out):
    """Run ``worker(rank, out)`` in two gloo processes; returns what each rank returned."""
    # fork, not spawn: the children skip re-importing torch and transformers (no CUDA in these tests)
    mp.start_processes(_entry, args=(free_port(), worker, out), nprocs=2, join=True, start_method="fork")
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


def write_data(folder, image="a.png"):
    Image.new("RGB", (40, 30), "red").save(folder / "a.png")
    ask = {"from": "human", "value": "<image>\nColour?"}
    records = [
        {"id": f"s{i}", "image": image, "conversations": [ask, {"from": "gpt", "value": "Red. " * (i + 1)}]}
        for i in range(5)
    ]
    (folder / "d.json").write_text(json.dumps(records))


def dataset_builder(folder):
    tokenizer = load_qwen2_tokenizer()
    add_image_token(tokenizer)
    return partial(
        VisionLanguageDataset,
        str(folder / "d.json"),
        None,
        tokenizer,
        load_template("qwen_chat"),
        tiny_image_processor(32),
        image_seq_length=16,
    )


def count_preparations():
    calls = []
    original = dataset_module._prepare

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    dataset_module._prepare = counting
    return calls


def mapped_tokens_file():
    """(device, inode) of the tokens.bin this process maps, from /proc/self/maps."""
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("tokens.bin"):
            fields = line.split()
            return [fields[3], fields[4]]
    return None


def _share_dataset(rank, out):
    calls = count_preparations()
    dataset = build_dataset_once(dataset_builder(out), timeout_s=60)
    items = [dataset[i] for i in range(len(dataset))]
    return {
        "prepare_calls": len(calls),
        "input_ids": [item["input_ids"].tolist() for item in items],
        "labels": [item["labels"].tolist() for item in items],
        "pixels": items[0]["pixel_values"].sum().item(),
        "store": str(dataset.store_path),
        "mapped": mapped_tokens_file(),
    }


def test_rank1_maps_rank0_files_without_tokenising(tmp_path):
    write_data(tmp_path)
    rank0, rank1 = run_two_ranks(_share_dataset, tmp_path)
    assert rank0["prepare_calls"] == 1 and rank1["prepare_calls"] == 0
    assert rank1["input_ids"] == rank0["input_ids"] and rank1["labels"] == rank0["labels"]
    assert rank1["pixels"] == rank0["pixels"]
    assert rank1["store"] == rank0["store"]
    assert rank0["mapped"] is not None and rank1["mapped"] == rank0["mapped"]  # one file, one copy in page cache


def _own_disk_per_node(rank, out):
    # each rank plays the local rank 0 of its own node, with a cache folder the other cannot see
    os.environ.update(VLTOOL_CACHE_DIR=str(out / f"node{rank}"), GROUP_RANK=str(rank), LOCAL_RANK="0")
    return _share_dataset(rank, out)


def test_a_node_without_rank0s_disk_prepares_its_own_copy(tmp_path):
    write_data(tmp_path)
    rank0, rank1 = run_two_ranks(_own_disk_per_node, tmp_path)
    assert rank0["prepare_calls"] == 1 and rank1["prepare_calls"] == 1
    assert rank0["store"].startswith(str(tmp_path / "node0")) and rank1["store"].startswith(str(tmp_path / "node1"))
    assert rank1["input_ids"] == rank0["input_ids"] and rank1["labels"] == rank0["labels"]


def _fail_on_rank0(rank, out):
    start = time.monotonic()
    try:
        build_dataset_once(dataset_builder(out), timeout_s=60)
    except DatasetError as err:
        return {"error": str(err), "seconds": time.monotonic() - start}
    return {"error": None}


def test_rank0_error_reaches_rank1_at_once(tmp_path):
    write_data(tmp_path, image="missing.png")
    rank0, rank1 = run_two_ranks(_fail_on_rank0, tmp_path)
    assert "sample s0: image" in rank0["error"] and "missing.png not found" in rank0["error"]
    assert rank1["error"] == rank0["error"]
    assert rank1["seconds"] < 30  # far below the 60 s timeout: rank 1 did not wait it out


def _slow_rank0(rank, out):
    start = time.monotonic()
    try:
        broadcast_from_rank0(partial(time.sleep, 6), timeout_s=2, setting="dataset_prepare_timeout")
    except DatasetError as err:
        return {"error": str(err), "seconds": time.monotonic() - start}
    return {"error": None}


def test_wait_past_timeout_names_the_setting(tmp_path):
    rank0, rank1 = run_two_ranks(_slow_rank0, tmp_path)
    assert rank1["error"] == (
        "dataset preparation on rank 0 took longer than dataset_prepare_timeout=2 s; raise dataset_prepare_timeout "
        "in the config or pre-tokenise with `vltool prepare-dataset CONFIG`."
    )
    assert rank1["seconds"] < 5  # gave up after the timeout, before rank 0 finished
    assert rank0["error"].startswith("rank 0 prepared the dataset in 6 s but the other ranks had stopped waiting")


def test_single_process_just_builds(tmp_path):
    write_data(tmp_path)
    calls = []
    assert broadcast_from_rank0(lambda: calls.append(1) or 7, timeout_s=1, setting="x") == 7
    assert calls == [1]
    dataset = build_dataset_once(dataset_builder(tmp_path))
    assert len(dataset) == 5


def test_timeout_must_be_positive():
    with pytest.raises(ConfigError, match=r"dataset_prepare_timeout=0 must be a positive number of seconds"):
        broadcast_from_rank0(lambda: 1, timeout_s=0, setting="dataset_prepare_timeout")

"""What the training dataset costs at LLaVA-1.5 scale: preparation time and memory, and each process's share.

Writes a synthetic ``llava_v1_5_mix665k.json`` (``tools/mix665k.py``: same size, components,
turn counts and lengths, 64 real JPEGs) and measures ``VisionLanguageDataset`` with the
target workload's settings (Qwen2 tokenizer, ``qwen_chat``, 576 visual tokens per image,
max_length 2048), each step in a fresh process so that its memory figures are its own:

1. prepare: wall time of a cold build (tokenising in ``--num-proc`` processes), peak RSS of
   the main process and of its workers (``getrusage`` and a /proc sampler of the process tree,
   which also gives the tree's peak PSS), and the prepared folder's size on disk;
2. rank: a training rank's ``/proc/self/smaps_rollup`` before opening the prepared dataset,
   after opening it, and after ``--reads`` random ``__getitem__`` calls plus the
   ``LengthGroupedSampler`` order;
3. loader: a ``DataLoader`` with ``--workers`` workers, ``--batch-size``, the dataset's
   ``LengthGroupedSampler`` and ``pad_collate``, run for ``--steps`` steps; each worker's
   smaps_rollup at step 10 and at the last step;
4. gloo: two ranks on 127.0.0.1 (as torchrun starts them) build the dataset with
   ``build_dataset_once`` and read ``--gloo-reads`` samples each; each reports its memory and
   the (device, inode) of the files it maps.

Growth in ``Anonymous``/``Private_Dirty`` is memory a process holds privately. Pages of a
memory-mapped file (``Pss_File``) are page cache: one copy in host RAM shared by every
process that maps the file, which the kernel can drop and reread; they are not private copies.

    .venv/bin/python tools/data_bench.py --samples 3000 --out /tmp/vltool_data_bench_small
    .venv/bin/python tools/data_bench.py --samples 665298 --out /tmp/vltool_data_bench
    .venv/bin/python tools/data_bench.py --samples 665298 --out /tmp/vltool_data_bench --skip-generate

Figures go to stdout as a markdown table and to ``<out>/results.json``; each child's log to
``<out>/logs/``. Every run prepares into an emptied ``<out>/cache``. ``tools/mix665k.py`` alone
only writes the data file; ``proc_memory.py`` reads /proc, ``data_bench_report.py`` the table.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from data_bench_report import report
from mix665k import FULL_SIZE, print_summary, write_mix
from proc_memory import (
    folder_bytes,
    machine_info,
    mapped_files,
    process_tree,
    smaps_rollup,
    trimmed_smaps,
)


# -- the dataset under test (every child builds it the same way) ---------------------------------
def dataset_parts() -> dict[str, Any]:
    """Tokenizer, template and image processor of the target workload, as keyword arguments."""
    from transformers import CLIPImageProcessor

    from vltool.model.tokenizer import add_image_token, load_qwen2_tokenizer
    from vltool.templates import load_template

    tokenizer = load_qwen2_tokenizer()
    add_image_token(tokenizer)
    # a small crop keeps image decoding cheap: what is measured is the dataset, not the processor
    processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    return {"tokenizer": tokenizer, "template": load_template("qwen_chat"), "image_processor": processor}


def dataset_arguments(args: argparse.Namespace, parts: dict[str, Any]) -> dict[str, Any]:
    """Every ``VisionLanguageDataset`` argument."""
    return dict(
        data_path=str(data_file(args)),
        image_folder=str(args.out / "images"),
        **parts,
        image_seq_length=args.image_seq_length,
        max_length=args.max_length,
        truncation="truncate",
        dataset_format="auto",
        image_aspect="pad",
        cache_dir=str(args.out / "cache"),
        num_proc=args.num_proc,
    )


def data_file(args: argparse.Namespace) -> Path:
    return args.out / f"llava_mix_{args.samples}.json"


# -- children: one measurement each, in a fresh process ------------------------------------------
def child_prepare(args: argparse.Namespace) -> dict[str, Any]:
    import resource

    from vltool.data.dataset import VisionLanguageDataset

    kwargs = dataset_arguments(args, dataset_parts())
    before = smaps_rollup()
    started = time.perf_counter()
    dataset = VisionLanguageDataset(**kwargs)
    seconds = time.perf_counter() - started
    store = dataset.store_path
    return {
        "seconds": seconds,
        "num_proc": kwargs["num_proc"] or "default",
        "kept": len(dataset),
        "summary": dataset.report.summary(args.max_length, "truncate"),
        "store": str(store),
        "store_bytes": folder_bytes(store),
        "cache_dir_bytes": folder_bytes(args.out / "cache"),
        "rss_before_kb": before.get("Rss"),
        "peak_rss_self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        # the largest waited-for descendant, not a sum (the sampler in the parent gives sums)
        "peak_rss_children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }


def child_rank(args: argparse.Namespace) -> dict[str, Any]:
    import random

    from vltool.data.dataset import VisionLanguageDataset

    kwargs = dataset_arguments(args, dataset_parts())
    snapshots = {"before": trimmed_smaps()}
    started = time.perf_counter()
    dataset = VisionLanguageDataset(**kwargs)
    open_seconds = time.perf_counter() - started
    snapshots["opened"] = trimmed_smaps()
    rng, tokens = random.Random(args.seed), 0
    for index in rng.sample(range(len(dataset)), min(args.reads, len(dataset))):
        tokens += dataset[index]["input_ids"].numel()
    snapshots["read"] = trimmed_smaps()
    sampler, sampler_note = make_sampler(dataset, args)
    order = list(sampler)
    snapshots["ordered"] = trimmed_smaps()
    return {
        "open_seconds": open_seconds,
        "reads": min(args.reads, len(dataset)),
        "tokens_read": tokens,
        "order_length": len(order),
        "sampler": sampler_note,
        "snapshots": snapshots,
        "mapped": mapped_files(under=args.out / "cache"),
    }


def make_sampler(dataset: Any, args: argparse.Namespace) -> tuple[Any, str]:
    """The dataset's ``LengthGroupedSampler``, or a seeded ``RandomSampler`` (and why) if it fails."""
    import torch
    from torch.utils.data import RandomSampler

    try:
        from vltool.data.sampler import LengthGroupedSampler

        sampler = LengthGroupedSampler(dataset, args.batch_size, seed=args.seed)
        next(iter(sampler))
        return sampler, "LengthGroupedSampler"
    except Exception as err:  # a benchmark of a dataset mid-rewrite reports this, it does not stop
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(args.seed))
        return sampler, f"RandomSampler (LengthGroupedSampler failed: {type(err).__name__}: {err})"


def record_worker(folder: str, worker_id: int) -> None:
    """``worker_init_fn``: leave this worker's pid where the main process can read it."""
    Path(folder, f"{worker_id}.pid").write_text(str(os.getpid()))


def child_loader(args: argparse.Namespace) -> dict[str, Any]:
    from functools import partial

    from torch.utils.data import DataLoader

    from vltool.data.collate import pad_collate
    from vltool.data.dataset import VisionLanguageDataset

    kwargs = dataset_arguments(args, dataset_parts())
    dataset = VisionLanguageDataset(**kwargs)
    sampler, sampler_note = make_sampler(dataset, args)
    pid_folder = args.out / "tmp" / "worker_pids"
    shutil.rmtree(pid_folder, ignore_errors=True)
    pid_folder.mkdir(parents=True)
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        collate_fn=partial(pad_collate, pad_token_id=kwargs["tokenizer"].pad_token_id),
        worker_init_fn=partial(record_worker, str(pid_folder)),
    )
    steps = min(args.steps, len(loader))  # never to the end: an exhausted iterator stops its workers
    first_step = min(10, steps)
    readings: dict[str, dict[str, dict[str, int]]] = {}
    started, tokens = time.perf_counter(), 0
    iterator = iter(loader)  # the workers live as long as this iterator
    for step in range(1, steps + 1):
        tokens += int(next(iterator)["attention_mask"].sum())
        if step == first_step:
            readings["first"] = worker_smaps(pid_folder, args.workers)
        if step == steps:
            readings["last"] = worker_smaps(pid_folder, args.workers)
    del iterator
    return {
        "steps": steps,
        "first_step": first_step,
        "seconds": time.perf_counter() - started,
        "tokens": tokens,
        "batch_size": args.batch_size,
        "sampler": sampler_note,
        "workers": readings,
        "main": smaps_rollup(),
    }


def worker_smaps(folder: Path, workers: int) -> dict[str, dict[str, int]]:
    """Each worker's smaps_rollup, by worker id (waits a little for workers still starting)."""
    if workers == 0:
        return {}
    deadline = time.monotonic() + 30
    while len(list(folder.glob("*.pid"))) < workers and time.monotonic() < deadline:
        time.sleep(0.05)
    readings = {}
    for path in sorted(folder.glob("*.pid")):
        pid = int(path.read_text())
        readings[path.stem] = {"pid": pid, **smaps_rollup(pid)}
    return readings


def child_gloo(args: argparse.Namespace) -> dict[str, Any]:
    import random
    from datetime import timedelta
    from functools import partial

    import torch.distributed as dist

    from vltool.data.dataset import VisionLanguageDataset
    from vltool.data.distributed import build_dataset_once

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", timeout=timedelta(seconds=args.prepare_timeout))
    kwargs = dataset_arguments(args, dataset_parts())
    snapshots = {"before": trimmed_smaps()}
    started = time.perf_counter()
    dataset = build_dataset_once(partial(VisionLanguageDataset, **kwargs), args.prepare_timeout)
    build_seconds = time.perf_counter() - started
    snapshots["built"] = trimmed_smaps()
    rng = random.Random(args.seed + rank)
    for index in rng.sample(range(len(dataset)), min(args.gloo_reads, len(dataset))):
        dataset[index]
    snapshots["read"] = trimmed_smaps()
    mapped = mapped_files(under=args.out / "cache")
    dist.barrier()  # neither rank exits, unmapping the files, before the other has read its maps
    dist.destroy_process_group()
    return {"rank": rank, "build_seconds": build_seconds, "snapshots": snapshots, "mapped": mapped}


CHILDREN = {"prepare": child_prepare, "rank": child_rank, "loader": child_loader, "gloo": child_gloo}


# -- the parent: runs each child, samples its process tree, prints the table ---------------------
class TreeSampler(threading.Thread):
    """Peak memory of a process and its descendants, sampled from /proc every ``interval`` seconds."""

    def __init__(self, root: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.done = threading.Event()
        self.peaks = dict.fromkeys(("main_rss", "worker_rss", "workers_rss_sum", "workers_anon_sum", "tree_pss"), 0)
        self.workers: set[int] = set()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            main = smaps_rollup(self.root)
            if not main:
                return
            workers = {pid: smaps_rollup(pid) for pid in process_tree(self.root)}
            workers = {pid: reading for pid, reading in workers.items() if reading}
            self.workers.update(workers)
            figures = {
                "main_rss": main.get("Rss", 0),
                "worker_rss": max((w.get("Rss", 0) for w in workers.values()), default=0),
                "workers_rss_sum": sum(w.get("Rss", 0) for w in workers.values()),
                "workers_anon_sum": sum(w.get("Anonymous", 0) for w in workers.values()),
                "tree_pss": main.get("Pss", 0) + sum(w.get("Pss", 0) for w in workers.values()),
            }
            for key, value in figures.items():
                self.peaks[key] = max(self.peaks[key], value)


def launch(mode: str, args: argparse.Namespace, env: dict[str, str] | None = None, tag: str = "") -> subprocess.Popen:
    """Start ``mode`` as a child of this script; its output goes to ``<out>/logs/<mode><tag>.log``."""
    name = f"{mode}{tag}"
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    result = args.out / "results" / f"{name}.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--_child", mode, "--_result", str(result), *sys.argv[1:]]
    with (args.out / "logs" / f"{name}.log").open("w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def collect(process: subprocess.Popen, mode: str, args: argparse.Namespace, tag: str = "") -> dict[str, Any]:
    """The child's result, or ``{"error": ...}`` with the end of its log."""
    name = f"{mode}{tag}"
    result, log = args.out / "results" / f"{name}.json", args.out / "logs" / f"{name}.log"
    if process.returncode == 0 and result.is_file():
        return json.loads(result.read_text())
    tail = log.read_text(errors="replace").strip().splitlines()[-6:]
    return {"error": f"exit {process.returncode}; {log}: " + " | ".join(tail)}


def run_child(mode: str, args: argparse.Namespace, sample_tree: bool = False) -> dict[str, Any]:
    print(f"[{mode}] running (log: {args.out / 'logs' / mode}.log)", flush=True)
    started = time.perf_counter()
    process = launch(mode, args)
    sampler = TreeSampler(process.pid) if sample_tree else None
    if sampler:
        sampler.start()
    process.wait()
    if sampler:
        sampler.done.set()
        sampler.join()
    result = collect(process, mode, args)
    result["child_seconds"] = time.perf_counter() - started
    if sampler:
        result["sampled_peaks_kb"] = sampler.peaks
        result["descendants_seen"] = len(sampler.workers)
    print(f"[{mode}] {'failed: ' + result['error'] if 'error' in result else 'done'}", flush=True)
    return result


def run_gloo(args: argparse.Namespace) -> dict[str, Any]:
    """Two ranks, as torchrun would start them on one machine."""
    print(f"[gloo] running 2 ranks (logs: {args.out / 'logs'}/gloo_rank*.log)", flush=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ranks = []
    for rank in range(2):
        env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        ranks.append(launch("gloo", args, env, tag=f"_rank{rank}"))
    deadline = time.monotonic() + args.prepare_timeout + 600
    for process in ranks:
        try:
            process.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in ranks:
                other.kill()
                other.wait()
    results = [collect(process, "gloo", args, tag=f"_rank{rank}") for rank, process in enumerate(ranks)]
    print(f"[gloo] {'failed' if any('error' in r for r in results) else 'done'}", flush=True)
    return {"ranks": results}


def main() -> None:
    args = parse_args()
    if args._child:
        result = CHILDREN[args._child](args)
        Path(args._result).write_text(json.dumps(result, indent=1, default=str))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine_info(), "samples": args.samples}
    if args.skip_generate:
        if not data_file(args).is_file():
            sys.exit(f"{data_file(args)} not found; run once without --skip-generate.")
    else:
        started = time.perf_counter()
        path, _, counts = write_mix(args.out, args.samples, args.seed)
        results["generate_seconds"] = time.perf_counter() - started
        results["components"] = dict(counts)
        print_summary(path, counts, results["generate_seconds"])
    results["data_bytes"] = data_file(args).stat().st_size
    if args.generate_only:
        return
    shutil.rmtree(args.out / "cache", ignore_errors=True)  # a cold preparation every run
    results["prepare"] = run_child("prepare", args, sample_tree=True)
    results["rank"] = run_child("rank", args)
    results["loader"] = run_child("loader", args)
    results["gloo"] = run_gloo(args)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(report(results))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=FULL_SIZE, help="samples to generate (default: 665,298)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vltool_data_bench"), help="data, cache and logs")
    parser.add_argument("--num-proc", type=int, default=None, help="preparation processes (default: the dataset's)")
    parser.add_argument("--image-seq-length", type=int, default=576, help="visual tokens per image")
    parser.add_argument("--max-length", type=int, default=2048, help="longer samples are truncated")
    parser.add_argument("--skip-generate", action="store_true", help="reuse <out>/llava_mix_<samples>.json")
    parser.add_argument("--generate-only", action="store_true", help="write the data file and stop")
    parser.add_argument("--steps", type=int, default=200, help="dataloader steps")
    parser.add_argument("--workers", type=int, default=4, help="dataloader workers")
    parser.add_argument("--batch-size", type=int, default=8, help="dataloader and sampler batch size")
    parser.add_argument("--reads", type=int, default=2000, help="random __getitem__ calls in the rank measurement")
    parser.add_argument("--gloo-reads", type=int, default=500, help="samples each gloo rank reads")
    parser.add_argument("--prepare-timeout", type=float, default=1800.0, help="build_dataset_once's timeout_s")
    parser.add_argument("--seed", type=int, default=0, help="data generation, reads and sampler order")
    parser.add_argument("--_child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--_result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out = args.out.resolve()
    return args


if __name__ == "__main__":
    main()

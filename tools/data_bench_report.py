"""The markdown table of ``tools/data_bench.py``'s figures (its ``results.json``)."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

NOTE = (
    "Private memory is `Anonymous`/`Private_Dirty` (heap, copied-on-write pages). `Pss_File` is pages of the "
    "memory-mapped prepared files: page cache, one copy in host RAM shared by every process that maps the file, "
    "which the kernel can drop and reread; not a private copy. A forked worker's `Anonymous` includes the pages "
    "it still shares copy-on-write with the main process; pages it copies show in `Private_Dirty` and `Pss`. "
    "Rank growths are measured after `gc.collect()` "
    "and `malloc_trim(0)`, so memory the allocator freed but kept does not count."
)
Rows = list[tuple[str, str]]


def mib(kb: float | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:,.1f} MiB"


def growth(snapshots: dict[str, dict[str, int]], start: str, end: str) -> str:
    """Private growth between two smaps_rollup snapshots, and the file pages that came with it."""

    def delta(key: str) -> str:
        return f"{key} {(snapshots[end].get(key, 0) - snapshots[start].get(key, 0)) / 1024:+,.1f} MiB"

    return f"{delta('Anonymous')}, {delta('Private_Dirty')}; {delta('Pss_File')} (page cache); {delta('Rss')}"


def prepare_rows(prep: dict[str, Any], results: dict[str, Any]) -> Rows:
    peaks = prep.get("sampled_peaks_kb", {})
    generated = f"{results['samples']:,} generated ({results['data_bytes'] / 1e6:,.1f} MB file)"
    wall = f"{prep['seconds']:.1f} s (num_proc={prep['num_proc']}, empty cache dir; "
    wall += f"{prep['child_seconds']:.1f} s with imports)"
    main = f"{mib(prep['peak_rss_self_kb'])} (getrusage; {mib(prep['rss_before_kb'])} before the build)"
    summed = f"{mib(peaks.get('workers_rss_sum'))} RSS, {mib(peaks.get('workers_anon_sum'))} anonymous"
    workers = (
        f"largest {mib(prep['peak_rss_children_kb'])} (getrusage); summed over workers {summed} "
        f"(sampled, {prep.get('descendants_seen', 0)} processes)"
    )
    if not prep.get("descendants_seen"):
        workers = "no worker processes (prepared in the main process)"
    size = prep["store_bytes"] / 1024 if prep["store_bytes"] else None
    return [
        ("samples", f"{generated}, {prep['kept']:,} kept"),
        ("tokens", prep["summary"]),
        ("prepare wall time", wall),
        ("prepare peak RSS, main process", main),
        ("prepare peak RSS, workers", workers),
        ("prepare peak PSS, whole process tree", f"{mib(peaks.get('tree_pss'))} (sampled every 0.25 s)"),
        ("cache size on disk", f"{mib(size)} (`{prep['store']}`)"),
    ]


def rank_rows(rank: dict[str, Any], results: dict[str, Any]) -> Rows:
    snaps, mapped = rank["snapshots"], rank["mapped"]
    files = f"{len(mapped)} files, {mib(sum(m['mapped_kb'] for m in mapped))} mapped" if mapped else "no file mapped"
    total = snaps["ordered"]
    return [
        ("open prepared dataset (fresh process)", f"{rank['open_seconds']:.2f} s; {files}"),
        ("rank growth: open", growth(snaps, "before", "opened")),
        (f"rank growth: {rank['reads']:,} random reads", growth(snaps, "opened", "read")),
        (f"rank growth: sampler order ({rank['order_length']:,})", growth(snaps, "read", "ordered")),
        ("rank after all", f"Anonymous {mib(total.get('Anonymous'))}, Pss {mib(total.get('Pss'))}; {rank['sampler']}"),
    ]


def loader_rows(loader: dict[str, Any], results: dict[str, Any]) -> Rows:
    first, last = loader["workers"].get("first", {}), loader["workers"]["last"]

    def per_worker(key: str) -> str:
        values = [(last[w].get(key, 0) - first[w].get(key, 0)) / 1024 for w in sorted(last) if w in first]
        return ", ".join(f"{value:+,.1f}" for value in values) + " MiB"

    at_end = ", ".join(f"{last[w].get('Rss', 0) / 1024:,.0f}/{last[w].get('Pss', 0) / 1024:,.0f}" for w in sorted(last))
    steps = f"step {loader['first_step']} → {loader['steps']}"
    run = (
        f"{len(last)} workers, batch {loader['batch_size']}, {loader['steps']} steps in {loader['seconds']:.1f} s, "
        f"{loader['tokens']:,} tokens; {loader['sampler']}"
    )
    return [
        ("dataloader", run),
        (f"worker growth, Anonymous ({steps})", per_worker("Anonymous")),
        (f"worker growth, Private_Dirty ({steps})", per_worker("Private_Dirty")),
        (f"worker growth, Pss ({steps})", per_worker("Pss")),
        (f"worker RSS/PSS at step {loader['steps']}", at_end + " MiB"),
    ]


def shared_files(ranks: list[dict[str, Any]]) -> str:
    """Whether the ranks map the same prepared files, named by device and inode."""
    maps = [{(m["device"], m["inode"], m["path"]) for m in rank["mapped"]} for rank in ranks]
    if not any(maps):
        return "no prepared file mapped: each rank holds its own copy of the dataset"
    # the token file when there is one, else the largest mapped file
    token_file = max(ranks[0]["mapped"], key=lambda m: (Path(m["path"]).name == "tokens.bin", m["mapped_kb"]))
    inodes = {(m["device"], m["inode"]) for rank in ranks for m in rank["mapped"] if m["path"] == token_file["path"]}
    same = "both ranks map the same" if maps[0] == maps[1] else "the ranks map different sets of"
    return (
        f"{same} {len(maps[0])} files; `{Path(token_file['path']).name}` at dev {token_file['device']} inode "
        f"{token_file['inode']}: {len(inodes)} dataset copy in host RAM (page cache, shared)"
    )


def gloo_rows(gloo: dict[str, Any], results: dict[str, Any]) -> Rows:
    rows = [("gloo, 2 ranks: prepared files", shared_files(gloo["ranks"]))]
    for rank in gloo["ranks"]:
        name = f"gloo rank {rank['rank']}: build_dataset_once ({rank['build_seconds']:.2f} s) + reads"
        rows.append((name, growth(rank["snapshots"], "before", "read")))
    return rows


SECTIONS: dict[str, Callable[[dict[str, Any], dict[str, Any]], Rows]] = {
    "prepare": prepare_rows,
    "rank": rank_rows,
    "loader": loader_rows,
    "gloo": gloo_rows,
}


def report(results: dict[str, Any]) -> str:
    """The figures as a markdown table, with the machine and what the memory fields mean."""
    rows: Rows = []
    for name, build_rows in SECTIONS.items():
        result = results[name]
        errors = [part["error"] for part in result.get("ranks", [result]) if "error" in part]
        if errors:
            rows += [(f"{name}: failed", error) for error in errors]
            continue
        try:
            rows += build_rows(result, results)
        except (KeyError, TypeError, ValueError) as err:  # a figure the dataset under test did not give
            rows.append((f"{name}: incomplete", f"{type(err).__name__}: {err}"))
    machine = results["machine"]
    cores = f"{machine['cores']} cores ({machine['usable_cores']} usable)"
    rows.append(("machine", f"{machine['cpu']}, {cores}, {machine['ram_gib']} GiB RAM, Linux {machine['kernel']}"))
    versions = f"Python {machine['python']}, torch {machine['torch']}, transformers {machine['transformers']}"
    rows.append(("software", f"{versions}, numpy {machine['numpy']}"))
    lines = ["| figure | value |", "|---|---|"] + [f"| {key} | {value.replace('|', '/')} |" for key, value in rows]
    return "\n".join(lines) + "\n\n" + NOTE

"""Process memory from Linux's /proc: smaps_rollup figures, process trees, mapped files, the machine.

``/proc/<pid>/smaps_rollup`` sums a process's mappings: ``Rss`` counts every resident page
it maps, ``Pss`` divides each shared page among the processes that map it (so PSS adds up
across processes to the RAM really used), ``Anonymous``/``Private_Dirty`` are the pages only
this process holds (heap, copied-on-write pages), ``Pss_File`` the file-backed pages (page
cache). Figures are in kB.
"""

import ctypes
import gc
import os
import platform
import re
from pathlib import Path
from typing import Any

_SMAPS_LINE = re.compile(r"^(\w+):\s+(\d+) kB$", re.MULTILINE)


def smaps_rollup(pid: int | str = "self") -> dict[str, int]:
    """``/proc/<pid>/smaps_rollup`` as ``{field: kB}``; empty when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (OSError, ProcessLookupError):
        return {}
    return {key: int(value) for key, value in _SMAPS_LINE.findall(text)}


def trimmed_smaps() -> dict[str, int]:
    """This process's smaps_rollup after a garbage collection and ``malloc_trim``.

    Freed memory that glibc's allocator still holds would otherwise count as growth; what is
    left is what the process keeps.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figures include the allocator's free lists
        pass
    return smaps_rollup()


def process_tree(root: int) -> list[int]:
    """Every descendant of ``root`` (children, their children, ...), from each process's ``stat``."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
        children.setdefault(parent, []).append(int(name))
    found, pending = [], [root]
    while pending:
        kids = children.get(pending.pop(), [])
        found += kids
        pending += kids
    return found


def mapped_files(under: Path, pid: int | str = "self") -> list[dict[str, Any]]:
    """The files below ``under`` that a process maps: path, device, inode and mapped kB."""
    files: dict[tuple[str, int, str], int] = {}
    root = str(under.resolve())
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].startswith(root):
            continue
        start, end = (int(part, 16) for part in fields[0].split("-"))
        key = (fields[3], int(fields[4]), fields[5])
        files[key] = files.get(key, 0) + (end - start) // 1024
    return [
        {"path": path, "device": device, "inode": inode, "mapped_kb": size}
        for (device, inode, path), size in sorted(files.items())
    ]


def folder_bytes(path: Path) -> int:
    """Bytes of a file, or of every file below a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, kernel and the versions that shape the figures."""
    import numpy
    import torch
    import transformers

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    meminfo = Path("/proc/meminfo").read_text()
    total_kb = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(total_kb / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
    }

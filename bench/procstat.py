"""Reading other processes' figures from /proc, shared by the benchmarks."""

from __future__ import annotations

import os
from pathlib import Path


def hwm_kib(pid: int) -> int:
    """Peak resident set of ``pid`` since its exec (VmHWM), 0 once it is gone.

    Not ``ru_maxrss`` of a waited child: that counts the moment after fork, when the child
    still shares its parent's pages (the benchmark process holds a whole testbed world)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(roots: list[int]) -> set[int]:
    """The given pids and all their children, grandchildren, ..."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.add(pid)
        todo.extend(children.get(pid, []))
    return out

"""What Linux's /proc tells about processes, read one way for all who ask.

The distributed stack finds a component's process groups by it, the tests find the process
that runs a task instance or the scheduler, and the benchmarks sum CPU and memory by
process tree. A process may end between the listing and the reading: `stats` and
`commands` leave such a process out, `stat` and `cmdline` raise OSError for it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/<pid>/stat we use (proc(5))."""

    parent: int
    group: int
    cpu_seconds: float  # utime + stime + cutime + cstime: its own and its reaped children's
    rss_bytes: int


def stat(pid: int) -> Stat:
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])
    return Stat(
        parent=int(fields[1]),
        group=int(fields[2]),
        cpu_seconds=ticks / os.sysconf("SC_CLK_TCK"),
        rss_bytes=int(fields[21]) * os.sysconf("SC_PAGE_SIZE"),
    )


def stats() -> dict[int, Stat]:
    """Every process now, by pid."""
    out: dict[int, Stat] = {}
    for pid in _pids():
        with contextlib.suppress(OSError, ValueError, IndexError):
            out[pid] = stat(pid)
    return out


def cmdline(pid: int) -> str:
    """The command line, its arguments joined by spaces."""
    raw = (PROC / str(pid) / "cmdline").read_bytes()
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def commands() -> dict[int, str]:
    """The command line of every process we may read, by pid."""
    out: dict[int, str] = {}
    for pid in _pids():
        with contextlib.suppress(OSError):
            out[pid] = cmdline(pid)
    return out


def descendants(roots: Iterable[int], table: Mapping[int, Stat]) -> set[int]:
    """The processes under `roots` in `table`, the roots (those alive) included."""
    children: dict[int, list[int]] = {}
    for pid, s in table.items():
        children.setdefault(s.parent, []).append(pid)
    todo, seen = [r for r in roots if r in table], set()
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += children.get(pid, [])
    return seen


def _pids() -> list[int]:
    return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]

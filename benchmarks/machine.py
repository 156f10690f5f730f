"""Who uses the CPUs during a run: the machine, the servers under test, and everybody else (Linux /proc).

A shared machine makes absolute numbers move with other people's work. The load runner reads,
about twice a second, the machine's busy time and the CPU time of the processes that serve the
target (found from the ports they listen on, with their children: Triton's Python stubs, uvicorn
workers). With the load generator's own CPU time that tells, per load step, how many cores the
servers used (so CPU per request, which hardly depends on contention) and how busy the machine
was with work that is not part of the measurement.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
"""Units of /proc CPU times per second."""


def read_cpu_times() -> tuple[float, float] | None:
    """``(busy, total)`` ticks of all CPUs from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat") as fh:
            fields = [float(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    total = sum(fields[:8])
    return total - idle, total


def _listening_inodes(ports: set[int]) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh, None)
            for line in fh:
                cols = line.split()
                if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) in ports:
                    inodes.add(cols[9])
    return inodes


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def server_pids(ports: Iterable[int]) -> list[int]:
    """The processes listening on ``ports`` and all their descendants (empty when /proc says nothing)."""
    wanted = {p for p in ports if p}
    if not wanted:
        return []
    inodes = _listening_inodes(wanted)
    owners: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        owners.add(int(entry.name))
                        break
    parents = _parents()
    found = set(owners)
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in found and pid not in found}
        found |= children
        grew = bool(children)
    return sorted(found)


def process_ticks(pids: Iterable[int]) -> float:
    """User + system CPU ticks of ``pids`` (processes that have exited count nothing)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += float(fields[11]) + float(fields[12])
    return total

"""CPU time of processes and of the whole machine, read from /proc (Linux only).

Used to say where the CPU goes during a measurement window: the client, each server process,
and everything else running on the machine (other work that makes the numbers noisy).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by every thread of process ``pid``."""
    with open(f"/proc/{pid}/stat") as stat:
        data = stat.read()
    fields = data[data.rindex(")") + 2 :].split()  # the command name may contain spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS


def machine_busy_s() -> float:
    """CPU seconds all cores have spent not idle since boot."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds used so far by named processes (role -> seconds) and by the whole machine, at ``at``
    (``time.perf_counter``)."""

    processes: dict[str, float]
    machine_s: float
    at: float


def cpu_snapshot(pids: Mapping[str, int]) -> CpuSnapshot:
    """The CPU time of each process in ``pids`` (role -> pid) and of the machine, now."""
    return CpuSnapshot({role: process_cpu_s(pid) for role, pid in pids.items()}, machine_busy_s(),
                       time.perf_counter())


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> tuple[dict[str, float], float]:
    """CPU seconds each role used between the snapshots, and the cores other processes kept busy."""
    used = {role: after.processes[role] - before.processes[role] for role in before.processes}
    other_s = (after.machine_s - before.machine_s) - sum(used.values())
    elapsed = after.at - before.at
    return used, max(other_s, 0.0) / elapsed if elapsed > 0 else 0.0

"""CPU accounting from /proc for the benchmark (Linux only).

Per process: user + system CPU seconds, all threads included (``/proc/<pid>/stat``). For the
machine: busy and steal seconds (``/proc/stat``). "Foreign" CPU is what the machine spent
outside the processes we watch: other people's jobs sharing the 2 cores, which makes a run
noisy; the benchmark reports it so that a disturbed run can be recognised.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

_TICK = float(os.sysconf("SC_CLK_TCK"))


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (all threads), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # Fields after the command name (which may contain spaces) start after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)


def system_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot."""
    with open("/proc/stat", "rb") as f:
        parts = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[1:9])
    return (user + nice + system + irq + softirq) / _TICK, steal / _TICK


@dataclass
class CpuSample:
    wall: float
    busy: float
    steal: float
    procs: dict[str, float]


@dataclass
class CpuDelta:
    wall_s: float
    procs: dict[str, float]  # name -> CPU seconds in the interval
    foreign_s: float  # machine busy time outside the watched processes
    steal_s: float


class CpuMeter:
    """Snapshots of watched processes and the machine; `delta` between two snapshots."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)

    def sample(self) -> CpuSample:
        busy, steal = system_cpu_s()
        procs = {}
        for name, pid in self.pids.items():
            value = process_cpu_s(pid)
            if value is not None:
                procs[name] = value
        return CpuSample(time.monotonic(), busy, steal, procs)

    @staticmethod
    def delta(before: CpuSample, after: CpuSample) -> CpuDelta:
        procs = {
            name: after.procs[name] - before.procs[name]
            for name in after.procs
            if name in before.procs
        }
        ours = sum(procs.values())
        return CpuDelta(
            wall_s=after.wall - before.wall,
            procs=procs,
            foreign_s=max(0.0, (after.busy - before.busy) - ours),
            steal_s=after.steal - before.steal,
        )


class PeakSampler:
    """Samples the machine every `interval_s` in a background thread while a run lasts and
    keeps the highest foreign load of any interval: a short burst from another process can
    wreck a tail latency while hardly moving the run's average."""

    def __init__(self, meter: CpuMeter, interval_s: float = 0.25) -> None:
        self._meter = meter
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-peaks", daemon=True)
        self.peak_foreign_cores = 0.0

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        before = self._meter.sample()
        while not self._stop.wait(self._interval_s):
            after = self._meter.sample()
            cpu = CpuMeter.delta(before, after)
            if cpu.wall_s > 0:
                self.peak_foreign_cores = max(self.peak_foreign_cores, cpu.foreign_s / cpu.wall_s)
            before = after

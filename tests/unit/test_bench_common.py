"""`loadtests.bench.common.cpu_seconds`: the CPU figure the benchmarks compare servers by."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from loadtests.bench.common import cpu_seconds

# Burns 0.3 CPU-s, then idles until killed.
_BURN = (
    "import time\n"
    "start = time.process_time()\n"
    "while time.process_time() - start < 0.3:\n"
    "    pass\n"
    "time.sleep(60)\n"
)


def test_cpu_seconds_counts_descendants_only_when_asked() -> None:
    child = subprocess.Popen([sys.executable, "-c", _BURN])
    try:
        deadline = time.monotonic() + 20
        while sum(psutil.Process(child.pid).cpu_times()[:2]) < 0.3:
            assert time.monotonic() < deadline, "the child never burned its CPU"
            time.sleep(0.05)
        own = cpu_seconds(os.getpid())
        tree = cpu_seconds(os.getpid(), descendants=True)
        assert tree - own >= 0.3
        assert cpu_seconds(child.pid) >= 0.3
    finally:
        child.kill()
        child.wait()

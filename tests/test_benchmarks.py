"""The benchmarks' own instruments: what they print has to be right."""

import subprocess
import sys
import time

from benchmarks.preprocess import ProcessTreeMeter

# Burns `s` CPU-seconds, says so, then waits for a line on stdin.
BURN = (
    "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"
    "print('burnt', flush=True)\nsys.stdin.readline()\n"
)


def test_process_tree_meter_counts_a_reaped_child_once_and_a_running_one_by_its_sample():
    """Two children that each burn 1 CPU-s: the meter reports about 2, not the 4 it
    printed when a reaped child's last sample was added to the kernel's children times."""
    run = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    with ProcessTreeMeter(interval=0.05) as meter:
        burn = [sys.executable, "-c", BURN.format(s=1.0)]
        subprocess.run(burn, input="\n", stdout=subprocess.PIPE, text=True, check=True)
        reaped = meter.cpu_seconds()
        child = subprocess.Popen(burn, **run)
        assert child.stdout.readline() == "burnt\n"
        while meter._children_cpu.get(child.pid, 0.0) < 1.0:  # its sample after the burn
            time.sleep(0.05)
        alive = meter.cpu_seconds()
        child.communicate("\n")
    total = meter.cpu_seconds()
    assert 0.9 <= reaped < 1.6, reaped
    assert 1.9 <= alive < 2.8, alive  # the running child counts by its last sample
    assert 1.9 <= total < 2.8, total  # once reaped by the kernel's times, not twice

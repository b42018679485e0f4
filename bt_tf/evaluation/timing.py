"""Wall and CPU time per evaluation stage (`StageClock`)."""

from __future__ import annotations

import contextlib
import logging
import resource
import time

__all__ = ["StageClock"]


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class StageClock:
    """Wall and CPU time per stage; ``records`` is a list of
    ``{"stage", "wall_s", "cpu_s"}``. CPU time is this process's (every
    thread): on a shared machine it is the figure that does not depend on the
    other users' load."""

    def __init__(self, records: list | None = None):
        self.records = records if records is not None else []

    @contextlib.contextmanager
    def __call__(self, stage: str):
        wall, cpu = time.perf_counter(), _cpu_seconds()
        try:
            yield
        finally:
            record = {
                "stage": stage,
                "wall_s": round(time.perf_counter() - wall, 3),
                "cpu_s": round(_cpu_seconds() - cpu, 3),
            }
            self.records.append(record)
            logging.info("time %s: wall %.1fs, cpu %.1fs", stage, record["wall_s"], record["cpu_s"])

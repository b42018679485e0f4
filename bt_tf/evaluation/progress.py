"""One updating progress line for a long stage: done/total, elapsed, time left (`Progress`).

On a terminal it is a `tqdm` bar (stderr); when stderr is a file or a pipe (a
log), one plain line every `LOG_EVERY_S` seconds instead of a line rewritten
in place. The time left is the elapsed time scaled by the work left, with each
step weighted by its expected cost (a probe at 100% labels costs far more than
one at 1%), so it does not promise the end too early when the cheap steps come
first. Disabled, it prints nothing (``--quiet``).
"""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["LOG_EVERY_S", "Progress", "format_seconds"]

LOG_EVERY_S = 30.0


def format_seconds(seconds: float) -> str:
    """``"42s"``, ``"7m05s"``, ``"1h02m"``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


class Progress:
    """Progress of ``total`` steps whose costs are ``weight`` each (`step`).

    Each step's message goes above the line (a terminal) or to the log (INFO).

    Args:
        desc: what is being done ("evaluation").
        total: number of steps.
        total_weight: the sum of the steps' weights (default: ``total``).
        unit: what a step is called in the line ("probes").
        enabled: False: silent.
        stream: where the line goes (default stderr); a terminal gets a bar.
    """

    def __init__(
        self,
        desc: str,
        total: int,
        *,
        total_weight: float | None = None,
        unit: str = "steps",
        enabled: bool = True,
        stream=None,
    ):
        self.desc, self.total, self.unit = desc, int(total), unit
        self.total_weight = float(total if total_weight is None else total_weight)
        self.done, self.done_weight = 0, 0.0
        self.enabled = enabled and self.total > 0
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self._last_log = self.start
        self._bar = None
        if self.enabled and _is_terminal(self.stream):
            from tqdm import tqdm  # lazy: only a terminal needs it

            self._bar = tqdm(
                total=self.total_weight,
                desc=desc,
                file=self.stream,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]",
                mininterval=0.5,
                dynamic_ncols=True,
            )
            self._bar.set_postfix_str(self._count(), refresh=True)

    def _count(self) -> str:
        return f"{self.done}/{self.total} {self.unit}"

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def time_left(self) -> float | None:
        """Seconds left at the rate so far (None before 2% of the work: the first steps
        also pay the workers' start)."""
        if self.done_weight <= 0.02 * self.total_weight:
            return None
        rate = self.elapsed / self.done_weight
        return rate * max(0.0, self.total_weight - self.done_weight)

    def line(self) -> str:
        """``"evaluation: 37/169 probes, 2m13s elapsed, ~7m40s left"``."""
        left = self.time_left()
        tail = "" if left is None else f", ~{format_seconds(left)} left"
        return f"{self.desc}: {self._count()}, {format_seconds(self.elapsed)} elapsed{tail}"

    def step(self, weight: float = 1.0, message: str | None = None) -> None:
        """One step done (``message``: a line printed above the progress line)."""
        self.done += 1
        self.done_weight += float(weight)
        if not self.enabled:
            if message:
                logging.info(message)
            return
        if self._bar is not None:
            if message:
                self._bar.write(message, file=self.stream)
            self._bar.set_postfix_str(self._count(), refresh=False)
            self._bar.update(float(weight))
            return
        if message:
            logging.info(message)
        now = time.perf_counter()
        if now - self._last_log >= LOG_EVERY_S or self.done == self.total:
            self._last_log = now
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False

"""Preprocessing at MovieLens-20M scale on DirectRunner, against a pyarrow parse.

    python -m benchmarks.preprocess                      # 138,493 users, ~20M ratings
    python -m benchmarks.preprocess --num_users=13849    # ~2M ratings, a quicker look
    python -m benchmarks.preprocess --direct_num_workers=2 --direct_running_mode=multi_processing

Writes a synthetic dataset in the ML-20M CSV layout (`ratings.csv`,
`movies.csv`), runs `pipelines.preprocess` on it (`--dataset=ml-20m`,
DirectRunner; other flags are Beam options), and prints wall time, the CPU
seconds and the peak resident memory of the whole process tree (this process
and any Beam workers), and the load average (the machine may be shared: wall
time only means something next to CPU time and load). Then, so that its memory
pool does not count, the time pyarrow needs merely to parse the same
`ratings.csv` (a lower bound) and the ratio of the two.
Targets on 2 cores: at most 5 minutes and at most 4 GB.
"""

from __future__ import annotations

import sys

from bt_tf import cli

if __name__ == "__main__":
    cli.startup(sys.argv[1:])  # before TensorFlow and Beam are imported: quiet unless --verbose

import os
import shutil
import threading
import time

import psutil
import pyarrow.csv

import pipelines  # noqa: F401  (One Keras)
from pipelines import synthetic
from pipelines.config import PreprocessConfig
from pipelines.preprocess import preprocess


class ProcessTreeMeter:
    """Samples the resident memory and CPU time of this process and its children.

    `peak` is the largest summed RSS seen; `cpu_seconds()` is user + system time
    of this process, of every descendant it has reaped (the kernel's
    ``children_*`` times) and, for the descendants still running, their last
    sample. A reaped child counts once: earlier this added its last sample to the
    ``children_*`` times that already hold it, and printed 1,571 CPU-s for a run
    `/usr/bin/time` measured at 876.
    """

    def __init__(self, interval: float = 0.2):
        self.peak = 0
        self._interval = interval
        self._children_cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._me = psutil.Process()
        self._start_cpu = self._own_cpu()

    def _own_cpu(self) -> float:
        t = self._me.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def _run(self):
        while not self._stop.is_set():
            rss = 0
            for proc in [self._me] + self._me.children(recursive=True):
                try:
                    rss += proc.memory_info().rss
                    if proc.pid != self._me.pid:
                        t = proc.cpu_times()
                        self._children_cpu[proc.pid] = t.user + t.system
                except psutil.Error:
                    pass
            self.peak = max(self.peak, rss)
            self._stop.wait(self._interval)

    def cpu_seconds(self) -> float:
        # Reaped descendants are in children_user/system; unreaped ones (running or
        # zombie) by their last sample.
        unreaped = {proc.pid for proc in self._me.children(recursive=True)}
        running = sum(cpu for pid, cpu in self._children_cpu.items() if pid in unreaped)
        return self._own_cpu() - self._start_cpu + running

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _ml20m_like_csv(args) -> str:
    """Writes (once) the synthetic ML-20M-layout files; their directory."""
    raw = os.path.join(args.work_dir, "raw")
    config = synthetic.SyntheticConfig(
        num_users=args.num_users,
        num_items=args.num_items,
        num_genres=20,
        mean_len=args.mean_len,
        max_len_seq=3000,
    )
    if not os.path.exists(os.path.join(raw, "ratings.csv")):
        start = time.perf_counter()
        written = synthetic.write_movielens_csv(config, raw)
        print(f"wrote {written['num_ratings']:,} ratings in {time.perf_counter() - start:.1f}s")
    return raw


def _measure_preprocess(raw: str, out: str, beam_args, keep: bool) -> dict:
    """Runs `pipelines.preprocess` on `raw` under a `ProcessTreeMeter`."""
    shutil.rmtree(out, ignore_errors=True)
    config = PreprocessConfig(
        dataset="ml-20m", data_dir=raw, output_dir=out, beam_args=tuple(beam_args)
    )
    load_before = os.getloadavg()[0]
    with ProcessTreeMeter() as meter:
        start = time.perf_counter()
        artifact_dir = preprocess(config)
        wall = time.perf_counter() - start
    cpu = meter.cpu_seconds()
    load_after = os.getloadavg()[0]
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "preprocess_seconds": wall,
        "preprocess_cpu_seconds": cpu,
        "peak_memory_gb": meter.peak / 1e9,
        "load_average": (load_before, load_after),
        "artifact_dir": artifact_dir,
    }


def _pyarrow_parse(path: str) -> tuple[int, float]:
    """(rows, seconds) of a plain pyarrow parse of `path`: the lower bound."""
    start = time.perf_counter()
    table = pyarrow.csv.read_csv(path)
    return table.num_rows, time.perf_counter() - start


def main(argv=None) -> dict:
    parser = cli.ArgumentParser("benchmarks.preprocess", description=cli.summary(__doc__))
    parser.add_argument("--work_dir", default="/tmp/bt_bench_ml20m")
    parser.add_argument("--num_users", type=int, default=138_493)
    parser.add_argument("--num_items", type=int, default=27_278)
    parser.add_argument("--mean_len", type=float, default=144.4)
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    args, beam_args = parser.parse_known_args(argv)

    raw = _ml20m_like_csv(args)
    ratings = os.path.join(raw, "ratings.csv")
    size = os.path.getsize(ratings)
    out = os.path.join(args.work_dir, "out")
    result = _measure_preprocess(raw, out, beam_args, args.keep)
    rows, parse_s = _pyarrow_parse(ratings)  # after: its memory pool must not count
    wall, cpu = result["preprocess_seconds"], result["preprocess_cpu_seconds"]
    load_before, load_after = result["load_average"]
    result.update(
        interactions=rows,
        ratings_csv_bytes=size,
        interactions_per_second=rows / wall,
        pyarrow_parse_seconds=parse_s,
        ratio_to_pyarrow=wall / parse_s,
        beam_args=list(beam_args),
    )
    print(f"ratings.csv: {rows:,} interactions, {size / 1e6:.0f} MB")
    print(
        f"preprocess ({' '.join(beam_args) or 'DirectRunner'}): {wall:8.1f} s wall  "
        f"{cpu:8.1f} s CPU  {rows / wall:12,.0f} interactions/s"
    )
    print(f"peak memory (process tree): {result['peak_memory_gb']:.2f} GB")
    print(f"load average (1 min) before / after: {load_before:.1f} / {load_after:.1f}")
    print(
        f"pyarrow.csv parse alone:   {parse_s:8.1f} s  (preprocess / parse = {wall / parse_s:.0f}x)"
    )
    return result


if __name__ == "__main__":
    cli.run_main(main)

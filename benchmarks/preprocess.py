"""Preprocessing at MovieLens-20M scale on DirectRunner, against a pyarrow parse.

    python -m benchmarks.preprocess                      # 138,493 users, ~20M ratings
    python -m benchmarks.preprocess --num_users=20000    # a quicker look

Writes a synthetic dataset in the ML-20M CSV layout (`ratings.csv`,
`movies.csv`), runs `pipelines.preprocess` on it (`--dataset=ml-20m`,
DirectRunner), and prints wall time, interactions per second and the peak
memory of the whole process tree, beside the time pyarrow needs merely to
parse the same `ratings.csv` (the lower bound) and the ratio of the two.
Targets on 2 cores: under 15 minutes and under 8 GB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time

import psutil

import pipelines  # noqa: F401  (One Keras)
from pipelines import preprocess as pp
from pipelines import synthetic


class PeakMemory:
    """Samples the resident memory of this process and its children."""

    def __init__(self, interval: float = 0.2):
        self.peak = 0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            procs = [me] + me.children(recursive=True)
            rss = 0
            for proc in procs:
                try:
                    rss += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, rss)
            self._stop.wait(self._interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default="/tmp/bt_bench_ml20m")
    parser.add_argument("--num_users", type=int, default=138_493)
    parser.add_argument("--num_items", type=int, default=27_278)
    parser.add_argument("--mean_len", type=float, default=144.4)
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    args, beam_args = parser.parse_known_args(argv)

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
    size = os.path.getsize(os.path.join(raw, "ratings.csv"))

    import pyarrow.csv

    start = time.perf_counter()
    table = pyarrow.csv.read_csv(os.path.join(raw, "ratings.csv"))
    parse_s = time.perf_counter() - start
    rows = table.num_rows
    del table

    out = os.path.join(args.work_dir, "out")
    shutil.rmtree(out, ignore_errors=True)
    preprocess_config = pp.PreprocessConfig(
        dataset="ml-20m", data_dir=raw, output_dir=out, beam_args=tuple(beam_args)
    )
    with PeakMemory() as memory:
        start = time.perf_counter()
        artifact_dir = pp.preprocess(preprocess_config)
        wall = time.perf_counter() - start
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)

    result = {
        "interactions": rows,
        "ratings_csv_bytes": size,
        "preprocess_seconds": wall,
        "interactions_per_second": rows / wall,
        "peak_memory_gb": memory.peak / 1e9,
        "pyarrow_parse_seconds": parse_s,
        "ratio_to_pyarrow": wall / parse_s,
        "artifact_dir": artifact_dir,
    }
    print(f"ratings.csv: {rows:,} interactions, {size / 1e6:.0f} MB")
    print(f"preprocess (DirectRunner): {wall:8.1f} s  {rows / wall:12,.0f} interactions/s")
    print(f"peak memory (process tree): {memory.peak / 1e9:.2f} GB")
    print(f"pyarrow.csv parse alone:   {parse_s:8.1f} s  (preprocess / parse = {wall / parse_s:.0f}x)")
    return result


if __name__ == "__main__":
    main()

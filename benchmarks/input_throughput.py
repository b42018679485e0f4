"""Throughput of the input pipeline alone: read + parse (+ two augmented views).

    python -m benchmarks.input_throughput                       # synthetic data, defaults
    python -m benchmarks.input_throughput --artifact_dir=DIR    # existing artifacts

Generates synthetic artifacts with the real preprocessing pipeline (cached
under ``--output_dir``; rerunning reuses them), then iterates
`bt_tf.data.dataset.make_dataset` (repeat, shuffle) and prints users/second for:
every output key, the training keys only (``view1``, ``view2``), and the
same without augmentation (`--policy`, e.g. with ``substitute:0.2,insert:0.2``,
whose co-occurrence table build is timed separately); each for the streamed
pipeline (read + parse every epoch), the in-memory one (``cache=True``: parsed
once, the one-time load timed separately) and the length-bucketed one
(``bucket_boundaries="auto"``). No model runs; this is the ceiling the input
puts on training speed.

Rates are wall clock and per CPU-second (process CPU time of all threads,
steadier when other jobs share the machine; on an idle machine the wall rate
approaches ``cores x`` the per-CPU-second rate when the pipeline's parallel
maps keep every core busy).
"""

from __future__ import annotations

import sys

from bt_tf import cli

if __name__ == "__main__":
    cli.startup(sys.argv[1:])  # before TensorFlow and Beam are imported: quiet unless --verbose

import time

import bt_tf  # noqa: F401  (One Keras: before tensorflow)
from bt_tf.data import augment, dataset
from bt_tf.features import ITEMS, LENGTH, VIEW1, VIEW2
from pipelines.preprocess import PreprocessConfig, preprocess
from pipelines.synthetic import SyntheticConfig


def rates(ds, warmup_batches: int, batches: int) -> tuple[float, float, int]:
    """Iterates ``ds``; returns (users/second, users per CPU-second, users measured)."""
    it = iter(ds)
    for _ in range(warmup_batches):
        next(it)
    users = 0
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        batch = next(it)
        users += int(next(iter(batch.values())).shape[0])
    return users / (time.perf_counter() - start), users / (time.process_time() - cpu), users


def measure(ds, warmup_batches: int, batches: int) -> tuple[float, int]:
    """Iterates ``ds``; returns (users/second after warm-up, users measured)."""
    rate, _, users = rates(ds, warmup_batches, batches)
    return rate, users


# long: a benchmark script: flags, one measurement per variant, the table
def main(argv=None) -> dict:
    parser = cli.ArgumentParser("benchmarks.input_throughput", description=cli.summary(__doc__))
    parser.add_argument("--artifact_dir", default=None, help="skip generation, use these")
    parser.add_argument("--output_dir", default="/tmp/bt_bench_data")
    parser.add_argument("--num_users", type=int, default=10_000)
    parser.add_argument("--mean_len", type=float, default=120.0)
    parser.add_argument("--max_len", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--policy", default="mask:0.2,reorder:0.2,crop:0.6")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--warmup_batches", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pipelines", default="", help="comma list of streamed, in memory, bucketed (all)"
    )
    args = parser.parse_args(argv)

    artifact_dir = args.artifact_dir
    if artifact_dir is None:
        start = time.perf_counter()
        artifact_dir = preprocess(
            PreprocessConfig(
                dataset="synthetic",
                output_dir=args.output_dir,
                max_len=args.max_len,
                synthetic=SyntheticConfig(
                    num_users=args.num_users,
                    mean_len=args.mean_len,
                    max_len_seq=max(int(3 * args.mean_len), args.max_len + 20),
                ),
            )
        )
        print(f"artifacts: {artifact_dir} ({time.perf_counter() - start:.1f}s incl. reuse)")
    meta = dataset.load_metadata(artifact_dir)
    policy = augment.AugmentPolicy.from_string(args.policy)
    print(
        f"train users: {meta['num_users']['train']}, batch {args.batch_size}, "
        f"max_len {args.max_len}, policy {policy.to_string()}, "
        f"{args.batches} timed batches after {args.warmup_batches} warm-up"
    )
    if policy.needs_cooccurrence:  # built once, before the timed cases (make_dataset caches it)
        start = time.perf_counter()
        table = dataset.cooccurrence_table(artifact_dir)
        print(f"co-occurrence table {table.shape}: {time.perf_counter() - start:.1f}s")
    cases = {
        "read+parse (all keys)": dict(outputs=None, augment_policy=None),
        "read+parse+two views (all keys)": dict(outputs=None, augment_policy=policy),
        "read+parse+two views (view1, view2)": dict(outputs=[VIEW1, VIEW2], augment_policy=policy),
        "read+parse (items, length)": dict(outputs=[ITEMS, LENGTH], augment_policy=None),
    }
    pipelines = {
        "streamed": {},
        "in memory": dict(cache=True),
        "bucketed": dict(bucket_boundaries="auto"),
    }
    results = {}
    print(f"{'':40s} {'pipeline':10s} {'users/s':>10s} {'per CPU-s':>10s}")
    for name, kwargs in cases.items():
        for pipeline, extra in pipelines.items():
            if args.pipelines and pipeline not in args.pipelines.split(","):
                continue
            start = time.perf_counter()
            ds = dataset.make_dataset(
                artifact_dir,
                "train",
                args.batch_size,
                max_len=args.max_len,
                seed=args.seed,
                repeat=True,
                drop_remainder=True,
                **kwargs,
                **extra,
            )
            made = time.perf_counter() - start
            wall, cpu, users = rates(ds, args.warmup_batches, args.batches)
            results[f"{name}, {pipeline}"] = wall
            load = f"  (parsed into memory in {made:.1f}s)" if extra else ""
            print(f"{name:40s} {pipeline:10s} {wall:10,.0f} {cpu:10,.0f}{load}", flush=True)
    return results


if __name__ == "__main__":
    cli.run_main(main)

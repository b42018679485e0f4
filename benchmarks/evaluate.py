"""One run's full downstream evaluation at MovieLens-1M scale, timed per stage.

    python -m benchmarks.evaluate                        # 6,000 users, 3,500 items
    python -m benchmarks.evaluate --seeds=1 --label_fractions=0.1,1.0   # a quicker look

Builds synthetic artifacts shaped like ML-1M (`pipelines.preprocess`,
``--dataset=synthetic``): 6,000 users, a 3,500-item catalog with 18 genres and
a user attribute, histories capped at 200 whose lengths follow ML-1M's
(median ~80, mean ~100, ~15-25% at the cap). Trains a barely-trained BT run
on them (the default encoder, d 64 and 2 Transformer blocks; a few steps: its
quality does not matter, only the shapes and costs do), then runs
`bt_tf.evaluate.evaluate_runs` on it with every task, 5 label fractions x 3
seeds and all floors (majority, popularity, bag-of-items, svd, untrained),
cross-fitted over 5 folds (every user scored), from an empty cache. Prints
wall and CPU seconds per stage (loading, each embedding, each task of the run
and of each floor, the intervals, the report), the wall time of the whole
evaluation (the probes run in parallel processes, so it is less than the sum
of the stages), then evaluates again to show what the caches leave to do
(``--rerun``).

CPU time is the process's that ran the stage, all threads. On a shared
machine the wall time depends on everyone else's load (printed beside it);
CPU time does not. Target: <= 5 minutes on 2 cores.
"""

from __future__ import annotations

import sys

from bt_tf import cli

if __name__ in cli.MAIN_NAMES:  # also a spawned probe worker's import of this module
    cli.startup(sys.argv[1:])  # before TensorFlow and Beam are imported: quiet unless --verbose

import argparse
import logging
import os
import shutil
import time

import numpy as np

import bt_tf  # noqa: F401  (One Keras: before tensorflow)
from bt_tf import features as F
from bt_tf.data import dataset
from bt_tf.evaluate import float_list
from bt_tf.evaluation.contenders import interaction_matrix
from bt_tf.evaluation.embedding_cache import history_extents
from bt_tf.evaluation.eval_data import EvalData, load_eval_data
from bt_tf.evaluation.runner import evaluate_runs
from bt_tf.evaluation.settings import DEFAULT_FRACTIONS, EvalSettings
from bt_tf.training import trainer
from bt_tf.training.config import TrainConfig
from pipelines import synthetic
from pipelines.config import PreprocessConfig
from pipelines.preprocess import preprocess


def ml1m_like(args) -> PreprocessConfig:
    """Synthetic data whose history lengths look like ML-1M's once capped at 200.

    Raw lengths are ``min_len + Exponential`` (mean ``mean_len``); the last
    ``future_len`` (10) interactions of each user are the future. With min 20
    and mean 120 the histories have median ~78, mean ~95 and ~15% at the cap
    (ML-1M: 79, 100, 24%).
    """
    syn = synthetic.SyntheticConfig(
        num_users=args.num_users,
        num_items=args.num_items,
        num_genres=args.num_genres,
        min_len=20,
        mean_len=args.mean_len,
        max_len_seq=2000,
    )
    return PreprocessConfig(
        dataset="synthetic",
        output_dir=os.path.join(args.work_dir, "data"),
        synthetic=syn,
        max_len=args.max_len,
    )


def history_stats(data: EvalData) -> str:
    lengths = np.concatenate([history_extents(data.history[s]) for s in F.SPLITS])
    bag = interaction_matrix(data.history["train"], data.num_items)
    return (
        f"history lengths: median {np.median(lengths):.0f}, mean {lengths.mean():.1f}, "
        f"{np.mean(lengths == data.width):.0%} at the cap {data.width}; distinct items per "
        f"train history (the bag-of-items nonzeros) {bag.nnz / bag.shape[0]:.1f} "
        "(ML-1M has no repeats: as many as its length)"
    )


def print_table(records: list[dict], title: str) -> dict:
    width = max([len(r["stage"]) for r in records] + [5])
    print(f"\n{title}")
    print(f"  {'stage':<{width}}  {'wall s':>8}  {'CPU s':>8}")
    for r in records:
        print(f"  {r['stage']:<{width}}  {r['wall_s']:>8.1f}  {r['cpu_s']:>8.1f}")
    total = {
        "wall_s": sum(r["wall_s"] for r in records),
        "cpu_s": sum(r["cpu_s"] for r in records),
    }
    print(f"  {'total':<{width}}  {total['wall_s']:>8.1f}  {total['cpu_s']:>8.1f}")
    return total


def main(argv=None) -> dict:
    parser = cli.ArgumentParser("benchmarks.evaluate", description=cli.summary(__doc__))
    parser.add_argument("--work_dir", default="/tmp/bt_bench_evaluate")
    parser.add_argument("--num_users", type=int, default=6000)
    parser.add_argument("--num_items", type=int, default=3500)
    parser.add_argument("--num_genres", type=int, default=18)
    parser.add_argument("--mean_len", type=float, default=120.0, help="raw interactions per user")
    parser.add_argument("--max_len", type=int, default=200)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--num_blocks", type=int, default=2)
    parser.add_argument("--train_steps", type=int, default=2, help="BT steps before evaluating")
    parser.add_argument("--label_fractions", type=float_list, default=list(DEFAULT_FRACTIONS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", default="", help="subset of the tasks (default all)")
    parser.add_argument("--floors", default=True, action=argparse.BooleanOptionalAction)
    parser.add_argument(
        "--rerun", default=True, action=argparse.BooleanOptionalAction, help="evaluate twice"
    )
    parser.add_argument("--keep", action="store_true", help="keep data, run and report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", force=True)

    data_config = ml1m_like(args)
    start = time.perf_counter()
    artifact_dir = preprocess(data_config)
    meta = dataset.load_metadata(artifact_dir)
    print(
        f"artifacts {artifact_dir} ({time.perf_counter() - start:.0f}s): users "
        f"{meta['num_users']}, vocab {meta['vocab_sizes']}, "
        f"attributes {sorted(meta.get('attributes') or {})}"
    )

    run_dir = os.path.join(args.work_dir, f"run_bt_d{args.dim}_steps{args.train_steps}")
    config = TrainConfig.from_settings(
        dict(
            model="bt",
            dim=args.dim,
            num_blocks=args.num_blocks,
            projector="256-256",
            batch_size=64,
            epochs=1,
            steps_per_epoch=args.train_steps,
            probe=False,
            export=False,
        ),
        data=data_config,
        run_dir=run_dir,
    )
    start = time.perf_counter()
    trainer.train(config)
    print(f"run {run_dir}: {args.train_steps} BT steps ({time.perf_counter() - start:.0f}s)")

    out_dir = os.path.join(args.work_dir, "report")
    shutil.rmtree(out_dir, ignore_errors=True)  # a cold evaluation: no cached embeddings/rows
    tasks = [t for t in args.tasks.split(",") if t.strip()] or None
    kwargs = dict(
        label_fractions=args.label_fractions,
        seeds=args.seeds,
        tasks=tasks,
        include_floors=args.floors,
        settings=EvalSettings(),
        baseline="bt",
        compare=(),
    )
    load_before = os.getloadavg()
    timings: list[dict] = []
    start = time.perf_counter()
    rows = evaluate_runs([run_dir], out_dir, timings=timings, **kwargs)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    data = load_eval_data(artifact_dir, width=args.max_len, tasks=[])
    print(history_stats(data))
    print(
        f"{len(args.label_fractions)} fractions x {args.seeds} seeds, "
        f"{len({r['task'] for r in rows})} tasks, models {sorted({r['model'] for r in rows})}"
    )
    total = print_table(timings, "cold evaluation (empty cache), per stage")
    print(f"cold evaluation, whole: {wall:.1f} s wall")
    total["whole_wall_s"] = wall
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after (shared: wall time includes waiting for other processes)"
    )
    result = {"cold": total, "stages": timings}
    if args.rerun:
        again: list[dict] = []
        evaluate_runs([run_dir], out_dir, timings=again, **kwargs)
        result["rerun"] = print_table(again, "rerun (embeddings and probe rows from the cache)")
    if not args.keep:
        shutil.rmtree(args.work_dir, ignore_errors=True)
    return result


if __name__ == "__main__":
    cli.run_main(main)
elif __name__ == cli.SPAWNED_MAIN:
    cli.end_startup()  # a probe worker: its log lines show

"""How evaluation time grows with the log: users, items, history length, runs.

    python -m benchmarks.evaluation_scale                       # shapes 3k and 25k
    python -m benchmarks.evaluation_scale --shapes=100k         # 100,000 users, 50,000 items
    python -m benchmarks.evaluation_scale --shapes=25k --models=bt --pretrain_seeds=1
    python -m benchmarks.evaluation_scale --shapes=100k --models=bt --pretrain_seeds=1 \
        --fractions=0.01,0.1,1.0 --seeds=1                     # bounded: per-probe costs

Per shape (users, items, mean events per user, after the 5/5 k-core):

- ``3k``: 3,000 x 3,600, mean 160 (held-out MovieLens-1M users' scale: long histories);
- ``25k``: 24,592 x 9,952, mean 9 (the e-commerce log of issue 26);
- ``100k``: ~100,000 x 50,000, mean 20.

It writes the log (`benchmarks.own_log`: ``customer,sku,ts``, no ratings, no
categories, so next item is the only task), preprocesses it as a user would
(``--dataset=interactions``), trains the runs `bt_tf.reproduce` would (``--models``
x ``--pretrain_seeds``, default 3 x 3) for ``--train_steps`` steps each (their
quality does not matter here, only the shapes), then evaluates them with every
floor at the default label fractions and seeds, from an empty cache, in
``--workers`` processes. Printed: the time of each stage; per label fraction
the CPU seconds of one probe (one contender's selection, refit and full-catalog
ranking on one fold); the whole evaluation's wall time, CPU time (this process
and its workers) and peak memory (resident, summed over the process tree); and
a JSON summary in ``--work_dir/summary_<shape>.json``.

On a shared machine wall time depends on everyone's load (printed beside it);
CPU time does not.
"""

from __future__ import annotations

import sys

from bt_tf import cli

if __name__ in cli.MAIN_NAMES:  # also a spawned probe worker's import of this module
    cli.startup(sys.argv[1:])  # before TensorFlow and Beam are imported: quiet unless --verbose

import collections
import json
import logging
import os
import shutil
import time

import numpy as np

import bt_tf  # noqa: F401  (One Keras: before tensorflow)
from benchmarks.own_log import OwnLogConfig, write_own_log
from benchmarks.preprocess import ProcessTreeMeter
from bt_tf.data import dataset
from bt_tf.evaluation import runner
from bt_tf.evaluation.probing import record_rows
from bt_tf.evaluation.settings import DEFAULT_FRACTIONS, EvalSettings
from bt_tf.training import trainer
from bt_tf.training.config import MODELS, TrainConfig
from pipelines.config import InteractionsConfig, PreprocessConfig
from pipelines.preprocess import preprocess

SHAPES = {
    "3k": OwnLogConfig(users=3000, items=3600, mean_length=157.0),
    "25k": OwnLogConfig(),
    "100k": OwnLogConfig(users=100_000, items=52_000, mean_length=20.0),
}
COLUMNS = InteractionsConfig(user_col="customer", item_col="sku", time_col="ts")


def prepare(shape: str, work_dir: str, args) -> tuple[str, PreprocessConfig]:
    """The shape's log and its artifacts (reused when present)."""
    log = os.path.join(work_dir, "log.csv")
    if not os.path.exists(log):
        start = time.perf_counter()
        written = write_own_log(log, SHAPES[shape])
        print(f"log {log}: {written['rows']} rows ({time.perf_counter() - start:.0f}s)")
    data = PreprocessConfig(
        dataset="interactions",
        data_dir=log,
        output_dir=os.path.join(work_dir, "data"),
        interactions=COLUMNS,
        max_len=args.max_len,
    )
    start = time.perf_counter()
    artifact_dir = preprocess(data)
    meta = dataset.load_metadata(artifact_dir)
    users = sum(meta["num_users"].values())
    print(
        f"artifacts {artifact_dir} ({time.perf_counter() - start:.0f}s): {users} users, "
        f"{meta['vocab_sizes']['items'] - 3} items, {meta['num_interactions']} interactions"
    )
    return artifact_dir, data


def train_runs(work_dir: str, data: PreprocessConfig, args) -> list[str]:
    """``--models`` x ``--pretrain_seeds`` barely trained runs (reused when present)."""
    run_dirs = []
    start = time.perf_counter()
    for model in args.models.split(","):
        for k in range(args.pretrain_seeds):
            run_dir = os.path.join(work_dir, "runs", model if k == 0 else f"{model}_seed{k}")
            config = TrainConfig.from_settings(
                dict(model=model, seed=k, epochs=1, steps_per_epoch=args.train_steps,
                     batch_size=256, probe=False, export=False, train_users="all"),
                data=data, run_dir=run_dir,
            )  # fmt: skip
            trainer.train(config)
            run_dirs.append(run_dir)
    took = time.perf_counter() - start
    print(f"{len(run_dirs)} runs, {args.train_steps} steps each ({took:.0f}s)")
    return run_dirs


def per_probe(records) -> dict:
    """(task, fraction) -> CPU seconds of one probe (one fold of one record), mean and count."""
    seconds = collections.defaultdict(list)
    for r in records:
        if r.cpu_s is not None:
            seconds[(r.task, r.fraction)] += [r.cpu_s / len(r.fits)] * len(r.fits)
    return {key: (float(np.mean(v)), len(v)) for key, v in sorted(seconds.items())}


def stage_totals(stages: list[dict]) -> dict[str, dict]:
    """Stages grouped: "load data", "embed", "floors", "probe <task>", "scores", ..."""
    out: dict[str, dict] = collections.OrderedDict()
    for s in stages:
        name = s["stage"]
        if name.endswith(": embed"):
            name = "embed (every run and untrained encoder)"
        elif name.endswith(": features"):
            name = "floor features (bag-of-items, svd)"
        elif ": " in name:
            name = "probe " + name.rsplit(": ", 1)[1]
        total = out.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0, "n": 0})
        total["wall_s"] += s["wall_s"]
        total["cpu_s"] += s["cpu_s"]
        total["n"] += 1
    return out


def run_shape(shape: str, args) -> dict:
    work_dir = os.path.join(args.work_dir, shape)
    artifact_dir, data = prepare(shape, work_dir, args)
    run_dirs = train_runs(work_dir, data, args)
    out_dir = os.path.join(work_dir, "report")
    shutil.rmtree(out_dir, ignore_errors=True)  # a cold evaluation: no cached embeddings/probes
    timings: list[dict] = []
    load_before = os.getloadavg()
    start = time.perf_counter()
    with ProcessTreeMeter() as meter:
        evaluation = runner.evaluate_records(
            run_dirs, out_dir, label_fractions=args.fractions, seeds=args.seeds,
            settings=EvalSettings(), timings=timings, workers=args.workers,
            progress=not args.quiet,
        )  # fmt: skip
        probed = time.perf_counter() - start
        rows = record_rows(evaluation.records, 10)
        runner.write_outputs(
            evaluation.records, rows, out_dir, evaluation.clock, ctx=evaluation.ctx,
            baseline="de" if "de" in args.models.split(",") else rows[0]["model"],
            compare=("bt", "bt+de"), title=f"evaluation benchmark {shape}",
            not_scored=evaluation.not_scored,
        )  # fmt: skip
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    ctx = evaluation.ctx
    contenders = sorted({(r.model, r.pretrain_seed) for r in evaluation.records})
    print(f"\n== {shape}: {ctx.population.size} users, {ctx.num_items - 3} items, "
          f"{len(contenders)} contenders ({len(run_dirs)} runs + floors), tasks "
          f"{sorted(evaluation.ctx.labels)}, {len(evaluation.records)} probe records")  # fmt: skip
    print(f"  {'stage':<45} {'wall s':>9} {'CPU s':>9}")
    for name, t in stage_totals(timings).items():
        print(f"  {name:<45} {t['wall_s']:>9.1f} {t['cpu_s']:>9.1f}")
    print("  CPU seconds of one probe (a contender's selection + refit + ranking on one fold):")
    probes = per_probe(evaluation.records)
    for (task, fraction), (mean, count) in probes.items():
        print(f"    {task} at {fraction:g}: {mean:.2f} s x {count}")
    print(f"  CPU seconds per contender and task ({len(contenders)} contenders):")
    per_contender = collections.defaultdict(float)
    for r in evaluation.records:
        if r.cpu_s is not None:
            per_contender[(r.model, r.task)] += r.cpu_s
    for (model, task), cpu in sorted(per_contender.items()):
        print(f"    {model} {task}: {cpu:.1f}")
    print(
        f"  evaluation: {wall:.0f} s wall ({probed:.0f} s probing), {meter.cpu_seconds():.0f} "
        f"CPU-s, peak memory {meter.peak / 2**30:.2f} GB (process tree); {os.cpu_count()} CPUs, "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
    )
    summary = {
        "shape": shape,
        "users": int(ctx.population.size),
        "items": int(ctx.num_items - 3),
        "runs": len(run_dirs),
        "contenders": len(contenders),
        "records": len(evaluation.records),
        "wall_s": round(wall, 1),
        "probing_wall_s": round(probed, 1),
        "cpu_s": round(meter.cpu_seconds(), 1),
        "peak_gb": round(meter.peak / 2**30, 2),
        "load_average": [load_before[0], load_after[0]],
        "stages": stage_totals(timings),
        "cpu_s_per_probe": {f"{t}|{f:g}": v for (t, f), v in probes.items()},
        "cpu_s_per_contender": {f"{m}|{t}": v for (m, t), v in per_contender.items()},
    }
    with open(os.path.join(args.work_dir, f"summary_{shape}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def main(argv=None) -> dict:
    parser = cli.ArgumentParser("benchmarks.evaluation_scale", description=cli.summary(__doc__))
    parser.add_argument("--shapes", default="3k,25k", help=f"of {', '.join(SHAPES)}")
    parser.add_argument("--work_dir", default="/tmp/bt_bench_evaluation_scale")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--pretrain_seeds", type=int, default=3)
    parser.add_argument("--train_steps", type=int, default=2, help="steps of each run")
    parser.add_argument("--max_len", type=int, default=200)
    parser.add_argument("--workers", type=int, default=None, help="probe processes")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument(
        "--fractions",
        type=lambda text: [float(f) for f in text.split(",") if f.strip()],
        default=list(DEFAULT_FRACTIONS),
        help="label fractions (default: the evaluation's; fewer bound a large shape's run, "
        "the CPU seconds per probe at each fraction then give the whole run's)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="label seeds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", force=True)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"--shapes: unknown {unknown}; expected some of {', '.join(SHAPES)}")
    return {shape: run_shape(shape, args) for shape in shapes}


if __name__ == "__main__":
    cli.run_main(main)
elif __name__ == cli.SPAWNED_MAIN:
    cli.end_startup()  # a probe worker: its log lines show

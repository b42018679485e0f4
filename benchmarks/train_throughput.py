"""Training throughput on this CPU: Barlow Twins / dual encoder, fixed-width vs bucketed.

    python -m benchmarks.train_throughput                    # BT at max_len 200, jit off/on
    python -m benchmarks.train_throughput --max_len=50 --steps_per_execution=10
    python -m benchmarks.train_throughput --lengths=ml-1m    # realistic lengths, BT and DE
    python -m benchmarks.train_throughput --lengths=ml-1m --de_losses=full_softmax,in_batch \
        --vocab_sizes=3709,50003                        # the DE's losses at two catalog sizes

Default mode (``--lengths=full``): prints sequences (users) per second for
  * BT training steps (two views per user) at batch 256, max_len 200, d 64,
    2 Transformer blocks, projector 1024-1024-1024, without and with
    `jit_compile`, on batches cached in memory (so only the model is timed),
    every history as long as ``max_len``; with ``--steps_per_execution=N``
    (N > 1) the same steps are also timed with N steps per `tf.function`
    call, back to back in this process (the per-step `fit` overhead);
  * the tf.data pipeline alone: read, parse, augment two views;
and the ratio pipeline / training (it must stay >= 3 so input never limits).

``--lengths=ml-1m``: histories drawn from MovieLens-1M's capped history
lengths (`ML1M_QUANTILES`: median 79, mean ~100, 24% at the cap of 200),
``--users`` of them (default: ML-1M's ~4,800 train users), random item ids.
One epoch of batches is built twice: padded to ``max_len`` (fixed width),
and length-bucketed by `bt_tf.data.dataset.epoch_plan` with
`bt_tf.data.dataset.auto_bucket_boundaries` (or ``--bucket_boundaries``). After one
warm-up step per distinct width, the whole epoch is timed for BT (two views)
and the DE (next-item pairs), and the bucketed / fixed ratio printed.

``--de_losses=L1,L2,...`` (with ``--lengths``): instead, the DE alone on the bucketed
epoch, once per loss (`bt_tf.modeling.dual_encoder.LOSSES`; ``sampled_softmax`` draws
``--num_negatives`` uniform negatives) and per catalog size of ``--vocab_sizes``, and
each loss's rate relative to the first one's; one step's logits are ``batch x width x
items`` for ``full_softmax``, ``batch x width x (1 + candidates)`` for the others.

Timing is wall clock; ``cpu`` is process CPU time (all threads), which moves
less when other jobs share the machine. The timed datasets run with tf.data
autotuning off (`steady`): they hold built batches, so there is nothing to
tune, and with autotuning on, deleting the iterator at the end of `fit`
blocks until the autotuner's background thread next wakes (its period
doubles from 10 ms: 10.23 s, 20.47 s, ... after the iterator was made), which
added up to half again to the timed seconds, at random.
"""

from __future__ import annotations

import sys

from bt_tf import cli

if __name__ == "__main__":
    cli.startup(sys.argv[1:])  # before TensorFlow and Beam are imported: quiet unless --verbose

import time

import numpy as np
import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras)
from benchmarks.input_throughput import measure
from bt_tf.data import augment, dataset
from bt_tf.features import ITEMS, NUM_RESERVED, PAD_ID, VIEW1, VIEW2
from bt_tf.modeling import precision
from bt_tf.modeling.barlow_twins import BarlowTwinsModel
from bt_tf.modeling.dual_encoder import DualEncoderModel
from bt_tf.modeling.encoders import SequenceEncoder
from bt_tf.modeling.projector import build_projector
from pipelines.preprocess import PreprocessConfig, preprocess
from pipelines.synthetic import SyntheticConfig

# MovieLens-1M history lengths (all of a user's ratings but the 10 future
# ones), as an inverse CDF: (quantile, length), linear in between; 24% are
# longer than 200. Capped at 200 this gives median 79, mean ~99.
ML1M_QUANTILES = (
    (0.00, 10),
    (0.10, 18),
    (0.20, 27),
    (0.30, 40),
    (0.40, 57),
    (0.50, 79),
    (0.60, 105),
    (0.70, 150),
    (0.76, 200),
    (1.00, 1000),
)
LENGTHS = {"ml-1m": ML1M_QUANTILES}
ML1M_TRAIN_USERS = 4832  # 80% of 6,040


def draw_lengths(table, num_users: int, max_len: int, seed: int) -> np.ndarray:
    """``num_users`` history lengths from an inverse-CDF table, capped at ``max_len``."""
    q, length = np.array(table, dtype=np.float64).T
    u = np.random.default_rng(seed).random(num_users)
    return np.minimum(np.floor(np.interp(u, q, length)).astype(np.int64), max_len)


def random_histories(lengths: np.ndarray, width: int, vocab_size: int, seed: int) -> np.ndarray:
    """int32 ``[n, width]`` right-padded histories of random items."""
    rng = np.random.default_rng(seed + 1)
    items = rng.integers(NUM_RESERVED, vocab_size, size=(len(lengths), width), dtype=np.int32)
    items[np.arange(width)[None, :] >= lengths[:, None]] = PAD_ID
    return items


def epoch_batches(lengths, batch_size: int, boundaries, max_len: int, seed: int):
    """One shuffled epoch as (row indices [B], width) pairs; ``boundaries=()`` = fixed width."""
    widths = [b for b in boundaries if b < max_len] + [max_len]
    bucket_of_row = np.searchsorted(widths, lengths, side="left").astype(np.int32)
    pool = np.random.default_rng(seed + 2).permutation(len(lengths)).astype(np.int64)
    batches, batch_widths, _ = dataset.epoch_plan(
        tf.constant(pool), tf.constant(bucket_of_row), tf.constant(widths, tf.int32), batch_size
    )
    order = np.random.default_rng(seed + 3).permutation(len(batch_widths))
    return [(batches.numpy()[i], int(batch_widths.numpy()[i])) for i in order]


def model_batches(items, plan, model_name: str, policy, seed: int) -> list[dict]:
    """Ready-made training batches (views, or the histories the DE cuts) at each batch's width."""
    out = []
    for step, (rows, width) in enumerate(plan):
        batch = tf.constant(items[rows, :width])
        batch_seed = tf.constant([seed, step], tf.int64)
        if model_name == "bt":
            view1, view2 = augment.two_views(batch, batch_seed, policy)
            out.append({VIEW1: view1, VIEW2: view2})
        else:  # every position of the history is a next-item query (DualEncoderModel)
            out.append({ITEMS: batch})
    return out


def build_model(
    model_name: str, vocab_size: int, args, de_loss: str = "in_batch"
) -> tf.keras.Model:
    tf.keras.utils.set_random_seed(args.seed)
    encoder = SequenceEncoder(
        vocab_size,
        max_len=args.max_len,
        dim=args.dim,
        num_blocks=args.num_blocks,
        causal=model_name == "de",  # the DE's query tower is causal (one query per position)
    )
    if model_name == "bt":
        return BarlowTwinsModel(encoder, build_projector(args.projector))
    return DualEncoderModel(
        encoder, vocab_size=vocab_size, temperature=0.1, loss=de_loss,
        num_negatives=args.num_negatives, tie_embeddings=de_loss != "in_batch",
    )  # fmt: skip


def _clock():
    return time.perf_counter(), time.process_time()


def _rates(start, users: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
    return users / wall, users / cpu


def steady(ds: tf.data.Dataset) -> tf.data.Dataset:
    """``ds`` without tf.data autotuning, whose thread can hold up the iterator's deletion."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def fit_rate(model, batches: list[dict], warmup: list[dict]) -> tuple[float, float]:
    """(users/s wall, users per CPU-second) of `model.fit` over ``batches``, after ``warmup``."""
    spec = {
        k: tf.TensorSpec([v.shape[0]] + [None] * (v.shape.rank - 1), v.dtype)
        for k, v in batches[0].items()
    }

    def dataset(parts):
        return steady(tf.data.Dataset.from_generator(lambda: iter(parts), output_signature=spec))

    model.fit(dataset(warmup), epochs=1, verbose=0)  # trace every width
    start = _clock()
    model.fit(dataset(batches), epochs=1, verbose=0)
    return _rates(start, sum(int(next(iter(b.values())).shape[0]) for b in batches))


def realistic_lengths(args) -> dict:
    """``--lengths=ml-1m``: fixed-width vs bucketed epochs, BT and DE."""
    vocab_size = args.vocab_size
    lengths = draw_lengths(LENGTHS[args.lengths], args.users, args.max_len, args.seed)
    items = random_histories(lengths, args.max_len, vocab_size, args.seed)
    if args.bucket_boundaries == "auto":
        boundaries = dataset.auto_bucket_boundaries(lengths, args.max_len, args.batch_size)
    else:
        boundaries = dataset.parse_bucket_boundaries(args.bucket_boundaries)
    policy = augment.AugmentPolicy.from_string(args.policy)
    print(
        f"{args.lengths} lengths: {args.users} users, median {np.median(lengths):.0f}, mean "
        f"{lengths.mean():.1f}, {np.mean(lengths == args.max_len):.0%} at max_len {args.max_len}; "
        f"batch {args.batch_size}, d {args.dim}, {args.num_blocks} blocks, projector "
        f"{args.projector}; buckets {list(boundaries)}",
        flush=True,
    )
    results = {}
    for model_name in args.models.split(","):
        for name, bounds in (("fixed", ()), ("bucketed", boundaries)):
            plan = epoch_batches(lengths, args.batch_size, bounds, args.max_len, args.seed)
            batches = model_batches(items, plan, model_name, policy, args.seed)
            firsts = {}
            for batch in batches:  # one warm-up step per distinct width
                firsts.setdefault(next(iter(batch.values())).shape[1], batch)
            padded = sum(w for _, w in plan) / len(plan)
            model = build_model(model_name, vocab_size, args)
            model.compile(
                optimizer=precision.optimizer_for_policy(tf.keras.optimizers.Adam(1e-3)),
                steps_per_execution=args.steps_per_execution,
            )
            wall, cpu = fit_rate(model, batches, list(firsts.values()))
            results[f"{model_name}_{name}"] = wall
            print(
                f"  {model_name.upper():2s} {name:8s}: {wall:8.1f} sequences/s ({cpu:8.1f} per "
                f"CPU-second), {len(plan)} steps, mean width {padded:.0f}",
                flush=True,
            )
        ratio = results[f"{model_name}_bucketed"] / results[f"{model_name}_fixed"]
        results[f"{model_name}_ratio"] = ratio
        print(f"  {model_name.upper()} bucketed / fixed: {ratio:.2f}x", flush=True)
    return results


def de_losses(args) -> dict:
    """``--de_losses``: the DE's sequences/s per loss and catalog size, bucketed epochs."""
    lengths = draw_lengths(LENGTHS[args.lengths], args.users, args.max_len, args.seed)
    boundaries = dataset.auto_bucket_boundaries(lengths, args.max_len, args.batch_size)
    plan = epoch_batches(lengths, args.batch_size, boundaries, args.max_len, args.seed)
    print(
        f"{args.lengths} lengths: {args.users} users, batch {args.batch_size}, d {args.dim}, "
        f"{args.num_blocks} blocks, buckets {list(boundaries)}; DE losses {args.de_losses} "
        f"(sampled_softmax: {args.num_negatives} negatives)",
        flush=True,
    )
    results = {}
    for vocab_size in (int(v) for v in args.vocab_sizes.split(",")):
        items = random_histories(lengths, args.max_len, vocab_size, args.seed)
        batches = model_batches(items, plan, "de", None, args.seed)
        firsts = {}
        for batch in batches:
            firsts.setdefault(batch[ITEMS].shape[1], batch)
        first = None
        for loss in args.de_losses.split(","):
            model = build_model("de", vocab_size, args, de_loss=loss)
            model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
            wall, cpu = fit_rate(model, batches, list(firsts.values()))
            results[f"{vocab_size}_{loss}"] = wall
            first = first or wall
            print(
                f"  {vocab_size - NUM_RESERVED:6d} items, {loss:15s}: {wall:8.1f} sequences/s "
                f"({cpu:8.1f} per CPU-second), {wall / first:.2f}x the first",
                flush=True,
            )
    return results


def train_rate(ds, vocab_size: int, args, jit: bool, steps_per_execution: int = 1):
    """(users/s wall, users per CPU-second) of `model.fit` steps over ``ds`` (built batches)."""
    model = build_model("bt", vocab_size, args)
    model.compile(
        optimizer=precision.optimizer_for_policy(tf.keras.optimizers.Adam(1e-3)),
        jit_compile=jit,
        steps_per_execution=steps_per_execution,
    )
    model.fit(ds, steps_per_epoch=max(args.warmup_steps, steps_per_execution), epochs=1, verbose=0)
    start = _clock()
    model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0)
    return _rates(start, args.steps * args.batch_size)


def full_lengths(args) -> dict:
    """The default mode: every history ``max_len`` long, synthetic artifacts."""

    # Sequences long enough that batches are really [256, max_len] wide.
    artifact_dir = preprocess(
        PreprocessConfig(
            dataset="synthetic",
            output_dir=args.output_dir,
            max_len=args.max_len,
            kcore_max_iterations=3,
            synthetic=SyntheticConfig(
                num_users=args.num_users, mean_len=220.0, min_len=40, max_len_seq=400
            ),
        )
    )
    vocab_size = dataset.load_metadata(artifact_dir)["vocab_sizes"]["items"]
    policy = augment.AugmentPolicy.from_string(args.policy)
    pipeline = dataset.make_dataset(
        artifact_dir,
        "train",
        args.batch_size,
        max_len=args.max_len,
        repeat=True,
        drop_remainder=True,
        augment_policy=policy,
        outputs=[VIEW1, VIEW2],
    )
    input_rate, _ = measure(pipeline, warmup_batches=5, batches=50)
    cached = steady(pipeline.take(4).cache().repeat())
    results = {"input_users_per_s": input_rate}
    cases = [("jit_compile=False", False, 1), ("jit_compile=True", True, 1)]
    if args.steps_per_execution > 1:
        n = args.steps_per_execution
        # Back to back with the plain fit, in this process (load changes between runs).
        cases = [("jit_compile=False", False, 1), (f"steps_per_execution={n}", False, n)]
        cases += [
            ("jit_compile=False (again)", False, 1),
            (f"steps_per_execution={n} (again)", False, n),
        ]
    print(
        f"batch {args.batch_size}, max_len {args.max_len}, d {args.dim}, "
        f"{args.num_blocks} blocks, projector {args.projector}, policy {args.policy}"
    )
    print(f"  tf.data pipeline (read, parse, two views): {input_rate:10.1f} sequences/s")
    for name, jit, spe in cases:
        wall, cpu = train_rate(cached, vocab_size, args, jit, spe)
        results[f"train_users_per_s_{name}"] = wall
        print(
            f"  BT training, {name:28s}: {wall:8.1f} sequences/s ({cpu:8.1f} per CPU-second; "
            f"pipeline is {input_rate / wall:.1f}x faster)",
            flush=True,
        )
    return results


def main(argv=None) -> dict:
    parser = cli.ArgumentParser("benchmarks.train_throughput", description=cli.summary(__doc__))
    parser.add_argument("--lengths", default="full", choices=("full", *LENGTHS))
    parser.add_argument("--output_dir", default="/tmp/bt_bench_data")
    parser.add_argument("--num_users", type=int, default=4000, help="synthetic users (full)")
    parser.add_argument("--users", type=int, default=ML1M_TRAIN_USERS, help="users (ml-1m)")
    parser.add_argument("--vocab_size", type=int, default=3709, help="items incl. reserved ids")
    parser.add_argument("--models", default="bt,de", help="with --lengths: bt, de or both")
    parser.add_argument("--bucket_boundaries", default="auto")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--max_len", type=int, default=200)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--num_blocks", type=int, default=2)
    parser.add_argument("--projector", default="1024-1024-1024")
    parser.add_argument("--policy", default="mask:0.3,reorder:0.3")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--steps_per_execution", type=int, default=1)
    parser.add_argument("--mixed_precision", default=None, choices=precision.PRECISIONS)
    parser.add_argument("--de_losses", default="", help="with --lengths: DE losses to time")
    parser.add_argument("--vocab_sizes", default="3709", help="with --de_losses: catalogs")
    parser.add_argument("--num_negatives", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    precision.set_precision(args.mixed_precision)
    if args.lengths == "full":
        return full_lengths(args)
    if args.de_losses:
        return de_losses(args)
    return realistic_lengths(args)


if __name__ == "__main__":
    cli.run_main(main)

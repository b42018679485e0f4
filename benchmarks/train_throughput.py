"""Barlow Twins training throughput on this CPU, beside the input pipeline's.

    python -m benchmarks.train_throughput
    python -m benchmarks.train_throughput --batch_size=256 --max_len=200 --steps=20

Prints sequences (users) per second for:
  * BT training steps (two views per user) at batch 256, max_len 200, d 64,
    2 Transformer blocks, projector 1024-1024-1024, without and with
    `jit_compile`, on batches cached in memory (so only the model is timed);
  * the tf.data pipeline alone: read, parse, augment two views;
and the ratio pipeline / training (it must stay >= 3 so input never limits).
"""

from __future__ import annotations

import argparse
import time

import bt_tf  # noqa: F401  (One Keras: before tensorflow)
import tensorflow as tf
from benchmarks.input_throughput import measure
from bt_tf import augment, encoders, models
from bt_tf import input as bt_input
from pipelines.preprocess import PreprocessConfig, preprocess
from pipelines.synthetic import SyntheticConfig


def train_rate(ds, vocab_size: int, args, jit: bool) -> float:
    """Users/second of `model.fit` steps over `ds` (already-built batches)."""
    tf.keras.utils.set_random_seed(args.seed)
    encoder = encoders.SequenceEncoder(
        vocab_size, max_len=args.max_len, dim=args.dim, num_blocks=args.num_blocks
    )
    model = models.BarlowTwinsModel(encoder, encoders.build_projector(args.projector))
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), jit_compile=jit)
    model.fit(ds, steps_per_epoch=args.warmup_steps, epochs=1, verbose=0)  # trace/compile
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="/tmp/bt_bench_data")
    parser.add_argument("--num_users", type=int, default=4000)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--max_len", type=int, default=200)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--num_blocks", type=int, default=2)
    parser.add_argument("--projector", default="1024-1024-1024")
    parser.add_argument("--policy", default="mask:0.3,reorder:0.3")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    # Sequences long enough that batches are really [256, 200] wide.
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
    vocab_size = bt_input.load_metadata(artifact_dir)["vocab_sizes"]["items"]
    policy = augment.AugmentPolicy.from_string(args.policy)
    pipeline = bt_input.make_dataset(
        artifact_dir,
        "train",
        args.batch_size,
        max_len=args.max_len,
        repeat=True,
        drop_remainder=True,
        augment_policy=policy,
        outputs=[bt_input.VIEW1, bt_input.VIEW2],
    )
    input_rate, _ = measure(pipeline, warmup_batches=5, batches=50)
    cached = pipeline.take(4).cache().repeat()
    results = {"input_users_per_s": input_rate}
    for jit in (False, True):
        results[f"train_users_per_s_jit_{jit}"] = train_rate(cached, vocab_size, args, jit)

    print(
        f"batch {args.batch_size}, max_len {args.max_len}, d {args.dim}, "
        f"{args.num_blocks} blocks, projector {args.projector}, policy {args.policy}"
    )
    print(f"  tf.data pipeline (read, parse, two views): {input_rate:10.1f} sequences/s")
    for jit in (False, True):
        rate = results[f"train_users_per_s_jit_{jit}"]
        print(
            f"  BT training, jit_compile={jit!s:5}: {rate:10.1f} sequences/s "
            f"(pipeline is {input_rate / rate:.1f}x faster)"
        )
    return results


if __name__ == "__main__":
    main()

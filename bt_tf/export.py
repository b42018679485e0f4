"""Export a run's user encoder as a SavedModel: `python -m bt_tf.export --run_dir=RUN`.

    python -m bt_tf.export --run_dir=runs/ml-1m_bt                # RUN/export/
    python -m bt_tf.export --run_dir=runs/ml-1m_de --k=20         # + top-20 `recommend`

The SavedModel takes raw item ids; its signatures, extra files and the run
layout it reads are described in `bt_tf.serving.export` (the library).
"""

from __future__ import annotations

import sys

# Importing bt_tf.cli runs bt_tf/__init__ first, which sets One Keras.
from bt_tf import cli

if __name__ == "__main__":
    cli.startup(sys.argv[1:])  # before TensorFlow is imported: quiet unless --verbose

import argparse
from collections.abc import Sequence

from bt_tf import runs
from bt_tf.serving.export import RECOMMEND_K, export_run


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        "bt_tf.export",
        description="Export a run's user encoder as a SavedModel taking raw item ids "
        "(RUN/export/; signatures in the module doc of bt_tf/serving/export.py).",
    )
    parser.add_argument("--run_dir", required=True, help="training run directory")
    parser.add_argument(
        "--recommend",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="add the top-k `recommend` signature (none: only for runs with an item tower, DE)",
    )
    parser.add_argument("--k", type=int, default=RECOMMEND_K, help="items per recommendation")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error(f"--k={args.k} must be >= 1")
    runs.read_config(args.run_dir)  # a run directory, before its lock is taken
    with runs.lock(args.run_dir):  # not while a training process writes the run
        path = export_run(args.run_dir, recommend=args.recommend, k=args.k)
    print(path)
    return 0


if __name__ == "__main__":
    cli.run_main(main)

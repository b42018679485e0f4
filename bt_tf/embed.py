"""Embeddings out: every user's embedding as Parquet or TFRecord, plus a TensorBoard projector.

    python -m bt_tf.embed --run_dir=RUN --output_dir=DIR [--split=all] [--format=parquet]
    python -m bt_tf.embed --saved_model=RUN/export --output_dir=DIR [--artifact_dir=ART]
    python -m bt_tf.embed --saved_model=EXPORT --input=users.jsonl --output_dir=DIR \\
        [--on_unknown=oov|skip|error]

Sources (exactly one of ``--run_dir`` and ``--saved_model``):

``--run_dir=RUN``
    the run's encoder restored from its latest checkpoint
    (`bt_tf.export.restore_encoder`), fed the users of the artifact dir named in
    ``RUN/config.json``, histories at the run's ``max_len``.
``--saved_model=EXPORT [--artifact_dir=ART]``
    the exported SavedModel alone (no checkpoint, no model code): its
    ``serving_default`` signature is fed each user's raw history item ids
    (``history_raw_item_ids``) read from the artifact dir. Without
    ``--artifact_dir``, the one named in ``EXPORT/../config.json`` (the run
    the export sits in) is used.
``--saved_model=EXPORT --input=FILE``
    your own users, JSON lines, one user per line:
    ``{"user_id": "u1", "item_ids": ["12", "7", "301"]}`` (history oldest
    first; numbers are read as their decimal strings; ids the model never saw
    embed as unknown items). Their split column reads ``input``; the projector
    metadata has user ids only. ``--on_unknown``: an item id the model never
    saw is embedded as the out-of-vocabulary item (``oov``, the default, as
    training treats items outside its vocabulary), dropped (``skip``: a user
    left with no item id is not written) or an error naming its line
    (``error``). What the file held is counted in ``embed_info.json`` (the
    ``input`` split's ``checks``) and said on stderr: users with unknown item
    ids and with only unknown ones (who all get one vector under ``oov``),
    users without any item id (the all-padding output), repeated and empty
    user ids (written as they come), with the first line numbers of each. A
    malformed line is an error naming the file and line; a file without any
    user is an error.

Output under ``--output_dir=DIR``::

    DIR/embed_info.json                     settings, source, dim, users and parts per split
    DIR/embeddings/<split>-00000.parquet    parts of --part_size users (or .tfrecord)
    DIR/projector/                          TensorBoard Embedding Projector folder

One row per user: ``user_id`` (raw id, string), ``split`` (string) and
``embedding`` (list of float32, the model's width), users in the artifact's
file order. Parquet parts are written row group by row group as the batches
come (memory holds one row group, not the split); ``pyarrow.parquet.
read_table("DIR/embeddings")`` or ``pandas.read_parquet`` reads them all.
TFRecord parts hold one ``tf.train.Example`` per user with ``user_id`` and
``split`` (bytes) and ``embedding`` (floats). `read_embeddings` reads either.

``DIR/projector/`` holds at most ``--projector_users`` users (a seeded sample
of the chosen splits, kept in output order): the vectors as a checkpoint,
``projector_config.pbtxt`` and ``metadata.tsv`` (header row, then per user:
user id, split, future favorite genre name, and one column per user
attribute with its class name; ``""`` = unknown). ``tensorboard --logdir
DIR/projector`` shows the users as points.

Resuming: a part is written to a temporary file beside it and renamed when
complete (``embed_info.json`` too: `bt_tf.atomic`); a rerun with the same
settings skips finished splits and finished parts (their users are read, not
embedded) and writes byte-identical files. A rerun with other settings, or
after the model changed (new checkpoint, other export), stops with an error;
``--overwrite`` starts over. One process writes an output directory at a
time: a second one stops with an error naming the first (``DIR/.lock``,
`bt_tf.locks`).
"""

from __future__ import annotations

import sys

from bt_tf import cli

if __name__ == "__main__":
    cli.startup(sys.argv[1:])  # before TensorFlow is imported: quiet unless --verbose

import argparse
import posixpath
from collections.abc import Sequence

from bt_tf.serving.embed import (
    FORMATS,
    INPUT_SPLIT,
    ON_UNKNOWN,
    PROJECTOR_DIR,
    SPLIT_CHOICES,
    Source,
    default_artifact_dir,
    describe_checks,
    input_source,
    run_source,
    saved_model_source,
    write_embeddings,
)

# --------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        "bt_tf.embed",
        description="Write every user's embedding (Parquet or TFRecord) and a TensorBoard "
        "Embedding Projector folder.\n\n" + __doc__.split("\n\n")[1],
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--run_dir", help="training run directory (its weights: the best epoch)", default=None
    )
    source.add_argument(
        "--saved_model", help="exported SavedModel directory, e.g. RUN/export", default=None
    )
    parser.add_argument(
        "--artifact_dir",
        help="with --saved_model: preprocessing output with the users' histories "
        "(default: the one in EXPORT/../config.json)",
    )
    parser.add_argument(
        "--input",
        help='with --saved_model: JSON lines {"user_id": ..., "item_ids": [...]} to embed '
        "instead of an artifact dir's users",
    )
    parser.add_argument(
        "--on_unknown",
        default="oov",
        choices=ON_UNKNOWN,
        help="with --input: an item id the model never saw is embedded as the "
        "out-of-vocabulary item (oov), dropped from the history (skip: a user left with "
        "no item is not written) or an error naming its line (error); counted either way",
    )
    parser.add_argument("--output_dir", required=True, help="where to write (resumed if present)")
    parser.add_argument("--split", default="all", choices=SPLIT_CHOICES, help="users to embed")
    parser.add_argument("--format", default="parquet", choices=FORMATS, help="embedding files")
    parser.add_argument("--batch_size", type=int, default=512, help="users per model call")
    parser.add_argument("--part_size", type=int, default=100_000, help="users per part file")
    parser.add_argument(
        "--projector_users", type=int, default=10_000, help="users in the projector (0 = none)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the projector sample")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an output written with other settings"
    )
    parser.add_argument(
        "--progress", default=True, action=argparse.BooleanOptionalAction, help="progress bar"
    )
    return parser


def _source_from_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Source:
    if args.on_unknown != "oov" and args.input is None:
        parser.error("--on_unknown goes with --input (the users of a file)")
    if args.run_dir is not None:
        if args.artifact_dir or args.input:
            parser.error("--artifact_dir and --input go with --saved_model, not --run_dir")
        return run_source(args.run_dir, batch_size=args.batch_size)
    if args.input is not None:
        if args.artifact_dir:
            parser.error("--input and --artifact_dir exclude each other")
        if args.split != "all":
            parser.error(f"--split={args.split} does not apply to --input users")
        return input_source(
            args.saved_model, args.input, batch_size=args.batch_size, on_unknown=args.on_unknown
        )
    artifact_dir = args.artifact_dir or default_artifact_dir(args.saved_model)
    if artifact_dir is None:
        parser.error(
            f"--saved_model={args.saved_model} is not inside a run directory: pass "
            "--artifact_dir=ART (the users' histories) or --input=users.jsonl"
        )
    return saved_model_source(args.saved_model, artifact_dir, batch_size=args.batch_size)


def _listing(output_dir: str, info: dict) -> str:
    lines = [f"{output_dir}: dim {info['dim']}, {info['settings']['format']}"]
    for split, entry in info["splits"].items():
        lines.append(f"  {split}: {entry['users']} users in {len(entry['parts'])} part(s)")
        lines += [f"    {posixpath.join(output_dir, p)}" for p in entry["parts"]]
    if info.get("projector"):
        path = posixpath.join(output_dir, PROJECTOR_DIR)
        lines.append(f"  projector: {info['projector']['users']} users in {path}")
        lines.append(f"    tensorboard --logdir {path}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (module doc). Missing runs, exports, artifacts or inputs and an
    output of other settings raise `UserError`/`FileNotFoundError`: `bt_tf.cli.run_main`
    prints them on one line and exits with code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("batch_size", "part_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag}={getattr(args, flag)} must be >= 1")
    if args.projector_users < 0:
        parser.error(f"--projector_users={args.projector_users} must be >= 0")
    source = _source_from_flags(args, parser)
    info = write_embeddings(
        source,
        args.output_dir,
        splits=None if args.split == "all" else [args.split],
        fmt=args.format,
        part_size=args.part_size,
        projector_users=args.projector_users,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=args.progress,
    )
    print(_listing(args.output_dir, info))
    checks = info["splits"].get(INPUT_SPLIT, {}).get("checks")
    line = describe_checks(checks, args.input) if checks and args.input else None
    if line:
        print(line, file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    cli.run_main(main)

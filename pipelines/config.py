"""Preprocessing settings, flags and artifact paths: light (no Beam, no TensorFlow).

`bt_tf` builds its command line from `add_flags` and keeps a `PreprocessConfig`
in its run config, so importing this module must not start Beam or TensorFlow.

Artifact layout under a version dir ``D`` (DESIGN.md, "Data contract"):
``D/Split-{train,eval,test}/data-NNNNN-of-NNNNN.tfrecord.gz``, ``D/schema.pbtxt``,
``D/vocab/{items,genres}.txt``, ``D/metadata.json``, ``D/bad_records/<file>.jsonl``;
while it runs, ``D/_parts/`` (per-block sorted Examples) and ``D/_stats.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import posixpath
from collections.abc import Sequence

from bt_tf import features as F
from bt_tf.errors import UserError
from pipelines import synthetic

DATASETS = ("synthetic", "ml-100k", "ml-1m", "ml-20m", "yelp", "interactions")
TFDS_DATASETS = ("ml-100k", "ml-1m", "ml-20m")  # --source=tfds


@dataclasses.dataclass(frozen=True)
class InteractionsConfig:
    """Where a user's own data is and which columns mean what (the flags, parsed).

    Attributes:
      user_col, item_col, time_col: required column names.
      rating_col: optional rating column; "" = the data has no ratings.
      items_file: optional file of item categories ("" = none).
      category_col: the items file's category column.
      category_sep: separator inside a category string ("" = no splitting).
      users_file: optional file of user attributes ("" = none).
      max_attribute_classes: most frequent values kept per attribute.
    """

    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    rating_col: str = ""
    items_file: str = ""
    category_col: str = "categories"
    category_sep: str = "|"
    users_file: str = ""
    max_attribute_classes: int = 50

    def __post_init__(self):
        for flag in ("user_col", "item_col", "time_col"):
            if not getattr(self, flag).strip():
                raise ValueError(f"--{flag} must name a column, got an empty string")
        named = [("user_col", self.user_col), ("item_col", self.item_col)]
        named += [("time_col", self.time_col)]
        if self.rating_col:
            named.append(("rating_col", self.rating_col))
        seen: dict[str, str] = {}
        for flag, column in named:
            if column in seen:
                raise ValueError(f"--{seen[column]} and --{flag} both name column {column!r}")
            seen[column] = flag
        if self.items_file and not self.category_col.strip():
            raise ValueError("--items_file needs --category_col (the category column)")
        if self.max_attribute_classes < 1:
            raise ValueError(
                f"--max_attribute_classes must be >= 1, got {self.max_attribute_classes}"
            )

    @property
    def has_ratings(self) -> bool:
        return bool(self.rating_col)


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Every setting of a preprocessing run (the CLI's flags, parsed)."""

    dataset: str = "synthetic"
    output_dir: str = "/tmp/bt_data"
    data_dir: str | None = None  # raw files; None: download (MovieLens) / generate
    source: str = "raw"  # "raw" files or "tfds" (TFDS_DATASETS only)
    cache_dir: str | None = None  # downloads (MovieLens) and TFDS data
    min_user_interactions: int = 5
    min_item_interactions: int = 5
    kcore_max_iterations: int = 12
    future_len: int = 10
    min_history_len: int = 3  # future shrinks for short users so history keeps this
    max_len: int = 200
    train_percent: int = 80
    eval_percent: int = 10
    num_shards: int = 4  # TFRecord shards per split
    max_bad_fraction: float = 0.001
    chunk_bytes: int = 32 << 20  # bytes per parallel read of a raw file
    tfds_shards: int = 8
    synthetic: synthetic.SyntheticConfig = synthetic.SyntheticConfig()
    # --dataset=interactions: columns and optional item/user files
    interactions: InteractionsConfig = InteractionsConfig()
    beam_args: tuple[str, ...] = ()  # passed through to Beam unchanged

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset={self.dataset!r}: expected one of {DATASETS}")
        if self.source not in ("raw", "tfds"):
            raise ValueError(f"--source={self.source!r}: expected 'raw' or 'tfds'")
        if self.source == "tfds" and self.dataset not in TFDS_DATASETS:
            raise ValueError(f"--source=tfds exists only for {', '.join(TFDS_DATASETS)}")
        if not (
            0 < self.train_percent
            and 0 <= self.eval_percent
            and self.train_percent + self.eval_percent <= 100
        ):
            raise ValueError("need 0 < train_percent, 0 <= eval_percent, sum <= 100")
        if self.future_len < 1 or self.max_len < 1 or self.min_history_len < 1:
            raise ValueError("future_len, max_len and min_history_len must be >= 1")
        if self.dataset == "interactions" and not self.data_dir:
            raise ValueError(
                "--dataset=interactions needs --data_dir: a directory of CSV, TSV, JSON lines "
                "or Parquet interaction files, or one such file"
            )
        own = self.interactions
        if self.dataset != "interactions" and (own.items_file or own.users_file):
            raise ValueError("--items_file and --users_file apply to --dataset=interactions only")

    def output_settings(self) -> dict:
        """The settings that change the output bytes (everything but where/how)."""
        out = dataclasses.asdict(self)
        for key in ("output_dir", "data_dir", "cache_dir", "chunk_bytes", "beam_args"):
            out.pop(key)
        if self.dataset != "synthetic":
            out.pop("synthetic")
        if self.dataset == "interactions":
            # Which items/users file is read is in the input fingerprints, not its path.
            out["interactions"].pop("items_file")
            out["interactions"].pop("users_file")
        else:
            out.pop("interactions")
        if self.source != "tfds":
            out.pop("tfds_shards")
        return out


# --------------------------------------------------------------------------
# Artifact paths

PARTS_DIR = "_parts"  # per-block sorted Examples, merged into shards, then deleted
STATS_FILE = "_stats.json"  # the pipeline's statistics, read into metadata.json, then deleted


def shard_path(root: str, split: str, shard: int, num_shards: int) -> str:
    """One TFRecord shard of a split."""
    return posixpath.join(
        root, F.SPLIT_DIR.format(split), f"data-{shard:05d}-of-{num_shards:05d}.tfrecord.gz"
    )


def part_path(root: str, bucket: tuple[str, int, int]) -> str:
    """The part file of a (split, shard, part) bucket: its users' Examples, sorted."""
    split, shard, part = bucket
    return posixpath.join(root, PARTS_DIR, f"{split}-{shard:05d}-{part:03d}.bin")


def vocab_path(root: str, name: str) -> str:
    """``F.ITEM_VOCAB_FILE`` or ``F.GENRE_VOCAB_FILE`` under `root`."""
    return posixpath.join(root, F.VOCAB_DIR, name)


def bad_records_path(root: str, file_name: str) -> str:
    """The bad records of one input file (its base name)."""
    return posixpath.join(root, F.BAD_RECORDS_DIR, file_name + ".jsonl")


# --------------------------------------------------------------------------
# Command line


def add_flags(parser: argparse.ArgumentParser, *, output_dir_alias: bool = True) -> None:
    """The preprocessing flags, shared with `bt_tf.train` (which preprocesses on demand).

    `--data_output_dir` is where artifacts go; here `--output_dir` is its alias,
    while `bt_tf.train` keeps `--output_dir` for the run directory.
    """
    d = PreprocessConfig()
    add = parser.add_argument
    add("--dataset", default=d.dataset, choices=DATASETS, help="which data (README: Datasets)")
    add(
        "--source",
        default=d.source,
        choices=("raw", "tfds"),
        help="raw files, or TFDS (ml-100k, ml-1m, ml-20m)",
    )
    add(
        "--data_dir",
        default=None,
        help="directory (or file) of the raw data; none: download MovieLens, generate synthetic",
    )
    names = ["--data_output_dir"] + (["--output_dir"] if output_dir_alias else [])
    add(
        *names,
        dest="data_output_dir",
        default=d.output_dir,
        help="where artifacts go (<dir>/<dataset>/<version>/; reused when present)",
    )
    add(
        "--cache_dir",
        default=None,
        help="downloads (none: ~/.cache/bt_tf/downloads) and TFDS data (none: TFDS's default)",
    )
    _add_processing_flags(parser)
    _add_interactions_flags(parser)


# One --<field> flag per field, typed like its default: (field, help).
_PROCESSING_FLAGS = (
    ("min_user_interactions", "k-core: users with fewer interactions are dropped"),
    ("min_item_interactions", "k-core: items with fewer interactions are dropped"),
    ("kcore_max_iterations", "k-core rounds; more needed is an error"),
    ("future_len", "each user's last interactions held out as the future (downstream labels)"),
    ("min_history_len", "the future shrinks for short users so the history keeps this many"),
    ("max_len", "most recent history items kept"),
    ("num_shards", "TFRecord files per split"),
    ("max_bad_fraction", "fraction of unparsable input records above which the run fails"),
    ("chunk_bytes", "bytes per parallel raw read"),
    ("tfds_shards", "parallel reads of a TFDS split"),
)
# (flag, field of SyntheticConfig, help)
_SYNTHETIC_FLAGS = (
    ("synthetic_users", "num_users", "users of --dataset=synthetic"),
    ("synthetic_items", "num_items", "items of --dataset=synthetic"),
    ("synthetic_seed", "seed", "seed of --dataset=synthetic"),
)
# (field of InteractionsConfig, help)
_INTERACTIONS_FLAGS = (
    ("user_col", "user id column (default: %(default)s)"),
    ("item_col", "item id column (default: %(default)s)"),
    ("time_col", "timestamp column: Unix s/ms or ISO 8601, naive = UTC (default: %(default)s)"),
    ("rating_col", "rating column; empty: no ratings, liked-item task unavailable (default: none)"),
    ("items_file", "optional item file with --item_col and --category_col (categories = genres)"),
    ("category_col", "item category column (default: %(default)s)"),
    (
        "category_sep",
        "separator inside a category value; empty: no splitting (default: %(default)s)",
    ),
    ("users_file", "optional user file: every column but --user_col becomes an attribute"),
    (
        "max_attribute_classes",
        "most frequent values kept per user attribute, rarer = unknown (default: %(default)s)",
    ),
)


def _add_processing_flags(parser: argparse.ArgumentParser) -> None:
    """k-core, history/future cut, shards, bad records, parallelism, synthetic data."""
    d = PreprocessConfig()
    for field, text in _PROCESSING_FLAGS:
        default = getattr(d, field)
        parser.add_argument(f"--{field}", type=type(default), default=default, help=text)
    for flag, field, text in _SYNTHETIC_FLAGS:
        default = getattr(d.synthetic, field)
        parser.add_argument(f"--{flag}", type=type(default), default=default, help=text)


def _add_interactions_flags(parser: argparse.ArgumentParser) -> None:
    o = InteractionsConfig()
    group = parser.add_argument_group(
        "--dataset=interactions (your own data; see pipelines/interactions_source.py)"
    )
    for field, text in _INTERACTIONS_FLAGS:
        default = getattr(o, field)
        group.add_argument(f"--{field}", type=type(default), default=default, help=text)


def parse_with_beam_flags(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, list[str]]:
    """`parser`'s flags, and the rest as Beam pipeline options; `UserError` for a flag
    that neither defines. Beam itself only logs "Discarding unparseable args" and goes
    on, so a mistyped flag (``--run_dir`` for ``--output_dir``) would silently be lost."""
    args, rest = parser.parse_known_args(argv)
    if rest:
        from apache_beam.options.pipeline_options import PipelineOptions  # Beam on demand

        options = PipelineOptions(list(rest))
        known = options.get_all_options()
        every = options.get_all_options(retain_unknown_options=True)
        unknown = [f"--{name}" for name in every if name not in known]
        after_flag = [p.startswith("--") and "=" not in p for p in ["-", *rest]]
        unknown += [a for a, value in zip(rest, after_flag) if not a.startswith("-") and not value]
        if unknown:
            what, flag = unknown[0], unknown[0].startswith("-")
            close = difflib.get_close_matches(what, parser._option_string_actions, 1)
            hint = f"; did you mean {close[0]}?" if close and flag else ""
            raise UserError(
                f"unknown {'flag' if flag else 'argument'} {what}: neither this command's flag "
                f"nor a Beam pipeline option{hint}"
            )
    return args, rest


def config_from_flags(args: argparse.Namespace, beam_args: Sequence[str] = ()) -> PreprocessConfig:
    """The config of parsed flags; `UserError` (naming the flag) for a bad combination."""
    try:
        return _config_from_flags(args, beam_args)
    except ValueError as err:
        raise UserError(str(err)) from None


def _config_from_flags(args: argparse.Namespace, beam_args: Sequence[str]) -> PreprocessConfig:
    return PreprocessConfig(
        dataset=args.dataset,
        source=args.source,
        data_dir=args.data_dir,
        output_dir=args.data_output_dir,
        cache_dir=args.cache_dir,
        **{field: getattr(args, field) for field, _ in _PROCESSING_FLAGS},
        synthetic=dataclasses.replace(
            synthetic.SyntheticConfig(),
            **{field: getattr(args, flag) for flag, field, _ in _SYNTHETIC_FLAGS},
        ),
        interactions=InteractionsConfig(
            **{field: getattr(args, field) for field, _ in _INTERACTIONS_FLAGS}
        ),
        beam_args=tuple(beam_args),
    )

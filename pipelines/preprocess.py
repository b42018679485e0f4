"""Raw interactions -> TFX-style TFRecord splits, with Apache Beam.

    python -m pipelines.preprocess --dataset=synthetic --output_dir=/tmp/bt_data
    python -m pipelines.preprocess --dataset=ml-100k --data_dir=~/ml-100k --output_dir=/tmp/bt_data
    python -m pipelines.preprocess --dataset=ml-1m --data_dir=~/data/ml-1m --output_dir=/tmp/bt_data
    python -m pipelines.preprocess --dataset=yelp --data_dir=~/data/yelp --output_dir=/tmp/bt \\
        --runner=DataflowRunner --project=... --temp_location=gs://...   # any Beam option
    python -m pipelines.preprocess --dataset=interactions --data_dir=~/my_log \\
        --user_col=customer --item_col=sku --time_col=ts --rating_col=stars   # your own data

Writes `OUTPUT_DIR/<dataset>/<version>/` (DESIGN.md, "Data contract"):
`Split-{train,eval,test}/data-NNNNN-of-NNNNN.tfrecord.gz`, `schema.pbtxt`,
`vocab/items.txt`, `vocab/genres.txt`, `metadata.json`, `bad_records/`.
`<version>` is a digest of every setting that changes the output and of the
input files' fingerprints, so the same input and flags find (and reuse) the
same directory, and any change writes a new one.

Steps (each a named `PTransform` of `pipelines.transforms`; the numpy work in
`pipelines.columnar`, `pipelines.blocks` and `pipelines.examples`):
1. read (`ReadSource`): raw files are cut into byte-range chunks read in parallel with exact
   line numbers (`pipelines.textio`); MovieLens ratings lines are parsed with
   numpy, other lines (and any line the vectorized reader does not accept) by
   the source's line parser; Parquet files are read by row group
   (`pipelines.interactions_source`); unparsable lines go to `bad_records/`.
2. group (`Split`): a hash of the user id puts each user in a bucket (split, output
   shard, part of that shard); interactions are grouped per bucket into
   columnar *blocks*, each user's sorted by timestamp, ties in input order.
3. k-core (`KCore`): rounds of per-item counts over the blocks, each a combine, each
   filtering users by length and items by count given the previous rounds'
   results, unrolled `kcore_max_iterations` times; the run fails if that was
   not enough to converge.
4. split: the bucket's (the same stable hash of the user id).
5. vocab (`BuildVocab`): item and genre vocabularies, frequency-ordered over train users only.
6. examples (`MakeExamples`): history/future cut, one `tf.train.Example` per user; each block
   writes its users' Examples, sorted by user id, to a part file, and each of
   the fixed number of shards per split is a streaming merge of its parts
   (byte-identical reruns, however the input was chunked).
7. the rest: `WriteBadRecords`, `WriteVocab`, `WriteStats`; then `metadata.json` and
   `schema.pbtxt` (`pipelines.metadata`). Every dropped record is counted by a Beam
   counter (`transforms.DROP_COUNTERS`).
Everything is written to a directory of this process, `<version>.partial-<unique>/`,
and renamed to `<version>/` at the very end, so an interrupted run leaves no
partial version and a rerun starts clean (it removes what a killed run left).
One process builds a version at a time: a second one into the same output
directory stops with one `error:` line naming the first (host, PID, start
time; the lock file `<version>.lock`, `bt_tf.locks`). No step holds all
interactions: a block holds the users of one of 3 * num_shards * 8 buckets.

Runner: `--runner=DirectRunner` unless a `--runner` is given (`local_runner`:
DirectRunner's batch engine, without its attempt to download the Prism runner).
"""

from __future__ import annotations

import sys

from bt_tf import cli

if __name__ == "__main__":
    cli.startup(sys.argv[1:])  # before TensorFlow and Beam are imported: quiet unless --verbose

import argparse
import contextlib
import io
import json
import logging
import os
import posixpath
import uuid
from collections.abc import Sequence

import apache_beam as beam
import tensorflow as tf
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners import create_runner
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from google.protobuf import text_format

import pipelines  # noqa: F401  (One Keras: sets TF_USE_LEGACY_KERAS before tensorflow)
from bt_tf import features as F
from bt_tf import locks
from bt_tf.errors import UserError
from pipelines import textio, transforms
from pipelines.config import (
    DATASETS,
    PARTS_DIR,
    STATS_FILE,
    PreprocessConfig,
    add_flags,
    config_from_flags,
    parse_with_beam_flags,
)
from pipelines.inputs import artifact_dir, resolve_inputs, version_of
from pipelines.metadata import (
    BadRecordsError,
    KCoreNotConvergedError,
    check_stats,
    metadata,
    schema_for,
)

# Public names of this module (`bt_tf` and the benchmarks use them from here; `bt_tf.cli`
# finds the two error types here). The light ones live in `pipelines.config`.
__all__ = [
    "DATASETS",
    "BadRecordsError",
    "KCoreNotConvergedError",
    "PreprocessConfig",
    "add_flags",
    "artifact_dir",
    "build_parser",
    "build_pipeline",
    "config_from_flags",
    "local_runner",
    "main",
    "make_runner",
    "pipeline_options",
    "preprocess",
    "resolve_inputs",
    "version_of",
]


def build_pipeline(p: beam.Pipeline, config: PreprocessConfig, files: dict, root: str) -> None:
    """Adds every step to `p`; outputs go under `root` (the temporary version dir)."""
    parsed = p | "Read" >> transforms.ReadSource(config, files)
    attributes = parsed.users | "Attributes" >> transforms.AttributeClasses(config, files)
    split = (parsed.interactions, parsed.users) | "Split" >> transforms.Split(config)
    k_core = split.blocks | "KCore" >> transforms.KCore(config)
    tables = (split.blocks, parsed.items) | "Vocab" >> transforms.BuildVocab(
        config, k_core.state, split.catalog
    )
    written = split.blocks | "Examples" >> transforms.MakeExamples(
        config,
        root,
        k_core=k_core.state,
        tables=tables,
        catalog=split.catalog,
        attributes=attributes,
    )
    stats = [
        written.shards,
        written.stats,
        k_core.stats,
        parsed.bad | "WriteBadRecords" >> transforms.WriteBadRecords(root),
        tables | "WriteVocab" >> transforms.WriteVocab(root),
    ]
    _ = (
        stats
        | "AllStats" >> beam.Flatten()
        | "WriteStats" >> transforms.WriteStats(root, lines=parsed.lines, attributes=attributes)
    )


def pipeline_options(beam_args: Sequence[str] = ()) -> PipelineOptions:
    """Beam `PipelineOptions` from the pass-through flags; ``--runner=DirectRunner``
    unless they name a runner.

    Every option is parsed here, before any work: Beam's own parser prints its
    whole usage and exits on a bad value (``--direct_num_workers=abc``); that
    becomes a `UserError` with the parser's message.
    """
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.insert(0, "--runner=DirectRunner")
    options = PipelineOptions(args)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            options.get_all_options()
    except SystemExit:
        message = printed.getvalue().strip().splitlines()[-1].partition("error: ")[2]
        raise UserError(f"Beam pipeline option: {message}") from None
    sys.stderr.write(printed.getvalue())
    return options


_DIRECT_RUNNER_NAMES = ("direct", "directrunner", "switchingdirectrunner")


def local_runner(options: PipelineOptions):
    """The runner object for `options` when they name the DirectRunner, else None.

    Beam's DirectRunner first tries its Prism runner, which downloads a binary
    from GitHub, and only then falls back to the FnApiRunner it uses for batch
    pipelines. We start that FnApiRunner directly, set up as DirectRunner does,
    so it honours ``--direct_num_workers`` and ``--direct_running_mode``. Other
    runners (None) are made by Beam from the options.
    """
    name = options.view_as(StandardOptions).runner
    if not isinstance(name, str) or name.lower() not in _DIRECT_RUNNER_NAMES:
        return None
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "multi_threading" and direct.direct_num_workers != 1:
        logging.warning(
            "--direct_running_mode=multi_threading with several workers gave wrong output "
            "(blocks lost) and 'Invalid PaneInfoEncoding' crashes with Beam 2.77 on this "
            "pipeline; use multi_processing or in_memory"
        )
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(
        provision_info=fn_runner.ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
        )
    )


def make_runner(options: PipelineOptions):
    """The runner that `options` name: `local_runner`'s for the DirectRunner, else Beam's.

    An unknown runner name, or one whose extra is not installed (Dataflow needs
    ``apache-beam[gcp]``), is a `UserError`.
    """
    runner = local_runner(options)
    if runner is not None:
        return runner
    name = options.view_as(StandardOptions).runner
    try:
        return create_runner(name)
    except (ValueError, ImportError) as err:
        raise UserError(f"--runner={name}: {err}") from None


PARTIAL = ".partial"  # "<version>.partial-<unique>/": one build in progress (or killed)


def preprocess(config: PreprocessConfig) -> str:
    """Runs the pipeline unless its version already exists; returns the artifact dir.

    One process builds a version at a time: the others stop with
    `bt_tf.locks.DirectoryLocked` (the lock file ``<version>.lock`` beside it).
    The build goes to a directory of its own, ``<version>.partial-<unique>/``,
    renamed to ``<version>/`` when complete: a version directory is complete
    or absent, and a reader never sees one being written.
    """
    options = pipeline_options(config.beam_args)  # bad Beam options fail before any work
    runner = make_runner(options)
    files = resolve_inputs(config)
    version = version_of(config, files)
    parent = locks.ensure_dir(posixpath.join(os.path.expanduser(config.output_dir), config.dataset))
    final = posixpath.join(parent, version)
    if _published(final):
        logging.info("reusing %s", final)
        return final
    with locks.hold(final + ".lock", what=final, hint=" or use another output directory"):
        if _published(final):  # built by the process that held the lock just before
            logging.info("reusing %s", final)
            return final
        _remove_partials(parent, version)
        tmp = _partial_dir(parent, version)
        with beam.Pipeline(runner=runner, options=options) as p:
            build_pipeline(p, config, files, tmp)
        parts = posixpath.join(tmp, PARTS_DIR)
        if tf.io.gfile.exists(parts):
            tf.io.gfile.rmtree(parts)
        _write_metadata(config, files, version, tmp)
        if tf.io.gfile.exists(final):  # without metadata.json: an incomplete older build
            logging.warning("replacing %s, which lacks %s", final, F.METADATA_FILE)
            tf.io.gfile.rmtree(final)
        tf.io.gfile.rename(tmp, final, overwrite=False)
    return final


def _published(version_dir: str) -> bool:
    """Whether a version is complete (its metadata.json is written last, then it is renamed)."""
    return tf.io.gfile.exists(posixpath.join(version_dir, F.METADATA_FILE))


def _remove_partials(parent: str, version: str) -> None:
    """Removes builds of `version` that a killed process left (call with its lock held)."""
    for name in tf.io.gfile.listdir(parent):
        if name.rstrip("/").startswith(version + PARTIAL):
            logging.info("removing %s, left by an interrupted run", name.rstrip("/"))
            tf.io.gfile.rmtree(posixpath.join(parent, name.rstrip("/")))


def _partial_dir(parent: str, version: str) -> str:
    """A new, empty build directory of this process: ``<version>.partial-<unique>``."""
    tmp = posixpath.join(parent, f"{version}{PARTIAL}-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    tf.io.gfile.makedirs(tmp)
    return tmp


def _write_metadata(config: PreprocessConfig, files: dict, version: str, tmp: str) -> None:
    """The pipeline's _stats.json, checked -> metadata.json and schema.pbtxt."""
    stats_path = posixpath.join(tmp, STATS_FILE)
    with tf.io.gfile.GFile(stats_path) as f:
        stats = json.load(f)
    tf.io.gfile.remove(stats_path)
    check_stats(stats, config, tmp)
    attributes = {name: tuple(classes) for name, classes in stats["attributes"]}
    meta = metadata(config, files, stats, attributes, version)
    textio.write_text(
        [json.dumps(meta, indent=2, sort_keys=True)], posixpath.join(tmp, F.METADATA_FILE)
    )
    textio.write_text(
        [text_format.MessageToString(schema_for(attributes))], posixpath.join(tmp, F.SCHEMA_FILE)
    )


# --------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        "pipelines.preprocess",
        description=cli.summary(__doc__),
        usage="%(prog)s [--flag=VALUE ...]",
        epilog="Any other --flag is a Beam pipeline option (e.g. --runner=...).",
    )
    add_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> str:
    args, beam_args = parse_with_beam_flags(build_parser(), argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = preprocess(config_from_flags(args, beam_args))
    with tf.io.gfile.GFile(posixpath.join(path, F.METADATA_FILE)) as f:
        meta = json.load(f)
    print(
        f"wrote {path}\n  users {meta['num_users']}  interactions {meta['num_interactions']}\n"
        f"  vocab {meta['vocab_sizes']}  bad records {meta['bad_records']['total']}"
    )
    return path


if __name__ == "__main__":
    cli.run_main(main)

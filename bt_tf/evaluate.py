"""Downstream evaluation of trained runs: `python -m bt_tf.evaluate`.

    python -m bt_tf.evaluate --runs=runs/ml1m_bt,runs/ml1m_de \\
        --label_fractions=0.01,0.05,0.1,0.25,1.0 --seeds=3 --output_dir=runs/ml1m_report

For every run: the encoder is restored from its checkpoint (``RUN/checkpoints/``:
the weights of its best val_loss epoch) and frozen, and every user is embedded.
Runs of one model that differ only in ``--seed`` are that model's pretraining
seeds: they share its name and every figure averages over them.

Who is scored (``--probe_folds``): cross-fitted by default (5 folds): every
user of every split is scored once per (label fraction, seed) by probes
trained on labels of the OTHER folds only (the encoders never read a label:
labels are each user's future interactions, encoders read histories).
``--probe_folds=0`` is the inductive split (train + eval users labelled, test
users scored). At label fraction f, f of the fold's users keep their labels
(seeded, stratified by class); each probe's regularisation is chosen by
cross-validation INSIDE those labelled users (``--inner_folds``, out-of-fold
log-likelihood, the simplest candidate within ``--probe_se_rule`` standard
errors of the best, starting from the prior predictor) and refitted on all of
them (`bt_tf.evaluation.linear`).

Tasks (labels from each user's future, i.e. the interactions after the
history the encoder sees); every contender gets the same probe family and
the same item-side inputs:

``next_item``
    the first future item, ranked over the FULL catalog (HR@k, NDCG@k, no
    sampled negatives), history items excluded (``--exclude_history``); a
    bilinear probe ``a u.e_i + u' W e_i + b log pop_i`` over the contender's
    own item vectors (BT: the encoder's input table; DE: its item tower; SVD:
    its item factors; bag-of-items: the item-kNN score of the history), whose
    size does not grow with the catalog. ``next_item_softmax`` (opt-in,
    ``--tasks``) is the full softmax probe, one weight column per item.
``favorite_genre``
    the most frequent genre/category among the future items; accuracy and
    balanced accuracy (multinomial logistic regression).
``liked_item``
    for each future (user, item): rating >= ``--liked_threshold`` (4)?
    Logistic regression on ``[u, v, u * v]`` plus a one-hot of the item (the
    same per-item bias for every contender); accuracy and the AUC (the mean
    of the folds' AUCs).
``attr_<name>``
    user attributes where the data has them (synthetic ``segment``, ML-1M
    ``gender``/``age``); accuracy and balanced accuracy.

Floors: ``majority`` / ``popularity`` (no features: the probes' prior
predictor), ``bias`` (liked item only: the item one-hot alone, fitted like
every contender's per-item bias), ``bag_of_items`` (history bags; item-kNN for next item), ``svd``
(the rank-d truncated SVD of the interaction matrix, d the encoders' width: a
floor of the embedding's own size) and ``untrained`` (an encoder of the same
architecture, freshly initialized).

Writes to ``--output_dir``: ``scores.parquet`` (every scored user's (or
pair's) contribution per model, pretraining seed, task, fraction, seed and
fold, so any figure can be recomputed), ``report.md`` (the claim's verdict
first, then per task and metric every model with its 95% paired bootstrap
interval over users, the ratios against ``--baseline`` and the floors, how
often selection kept the prior), ``results.json`` (all of it, with the
``claim`` block), ``metrics_vs_fraction.png`` and ``timings.json``.

The claim (docs/USAGE.md, "The claim"): ``--claim_models=MODEL,BASELINE``
(default bt,de) is the one pair judged (MODEL >= 1.08 x BASELINE; ``--baseline``
only sets the tables' ratios). Its intervals resample users, label seeds and
each model's pretraining seeds; the block says which scored users' labels
chose a default the runs used (``selection``: in-sample or out-of-sample,
from ``DEFAULTS_PROVENANCE`` in `bt_tf.training.flags`). ``--claim_users=test``
scores it on the test split's users only, beside the all-users claim.

Cost: the probes run in parallel worker processes (numpy, scipy); one run's
evaluation on ML-100K (943 users, 5 folds, 5 fractions x 3 seeds, every
floor) takes a few minutes on 2 cores (`python -m benchmarks.evaluate` times
an ML-1M-sized one). Cheaper: fewer ``--label_fractions`` or ``--seeds``,
``--probe_folds=0``, ``--no-floors`` when the floors are already known.

The runs as recommenders (``--recommender``): instead of the probes, every DE and
BT+DE run (a "bt" run has no item tower and is skipped) is scored with its own
query encoder and item table in the protocol it was trained in: a
``--protocol=leave_one_out`` run on its users' test item (item n, after the
history and item n-1), a history/future run on each user's last stored item;
ranked against the whole catalog minus the user's earlier items (full, the
headline) and against 100 sampled unrated items (secondary), each with its 95%
bootstrap interval over users, beside popularity (`bt_tf.evaluation.recommender`);
writes ``recommender.json`` and ``recommender.md`` to ``--output_dir``. A
leave-one-out run can only be scored so (it holds out items, not users):

    python -m bt_tf.evaluate --runs=runs/ml100k_loo_de --recommender --output_dir=runs/report

Caches (``--cache``, on by default), in ``<output_dir>/cache/``: every run's
and the untrained encoder's user and item embeddings
(``embeddings/<model>.npz``), computed once and reused by every (task,
fraction, seed) and every rerun while the run's latest checkpoint (its path
and the checksums in its ``.index`` file) and the data (metadata, width, user
ids) are unchanged; and every probe's scored units per (model, task, fraction,
seed) (``units/``), reused while the features, the settings and the protocol
are unchanged, so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import sys

from bt_tf import cli

if __name__ in cli.MAIN_NAMES:  # also a spawned probe worker's import of this module
    cli.startup(sys.argv[1:])  # before TensorFlow is imported: quiet unless --verbose

import argparse
import logging
import os
from collections.abc import Sequence

import bt_tf  # noqa: F401  (One Keras)
from bt_tf import locks, runs
from bt_tf.errors import UserError
from bt_tf.evaluation import recommender
from bt_tf.evaluation.intervals import CLAIM_FRACTIONS, DEFAULT_RESAMPLES
from bt_tf.evaluation.protocol import Protocol
from bt_tf.evaluation.runner import CLAIM_USERS_ALL, evaluate_runs
from bt_tf.evaluation.scores import CLAIM_MODELS
from bt_tf.evaluation.settings import DEFAULT_FRACTIONS, EvalSettings
from bt_tf.evaluation.tasks import DEFAULT_TASKS, NEXT_ITEM_SOFTMAX
from bt_tf.features import SPLITS

__all__ = [
    "float_list",
    "fraction_list",
    "add_flags",
    "settings_from_flags",
    "protocol_from_flags",
    "tasks_from_flags",
    "log_level",
    "repeated_fractions",
    "build_parser",
    "main",
]


# --------------------------------------------------------------------------
# CLI


def float_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


# argparse types: comma-separated values, checked (errors name the flag).
fraction_list = cli.comma_list(float, "fractions in (0, 1]", lambda f: 0.0 < f <= 1.0)
_positive_list = cli.comma_list(float, "values > 0", lambda v: v > 0.0)


def _claim_models(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    if len(models) != 2 or models[0] == models[1]:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected two different models, MODEL,BASELINE (e.g. bt,de)"
        )
    return models


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value

    return parse


_BOOLEAN = argparse.BooleanOptionalAction
# The `EvalSettings` fields set by a flag of the same name (default: the field's), in
# --help order; the grids (lists) are added apart.
_SETTING_FLAGS = {
    "probe_se_rule": dict(
        type=float,
        help="probe selection: the simplest candidate within this many standard errors "
        "of the best cross-validated log-likelihood wins (0 = plain argmax)",
    ),
    "next_item_negatives": dict(
        type=_at_least(0),
        help="next item: the probe's fits and selection run their softmax over this many "
        "items, the most popular always and a popularity-weighted sample of the rest "
        "(logQ-corrected); 0 or at least half the catalog: every item. The HR/NDCG "
        "always rank the full catalog",
    ),
    "next_item_selection_rows": dict(
        type=_at_least(0),
        help="next item: with more labelled users than this, the probe's C is chosen by "
        "cross-validation on a seeded subsample of this many, then refitted on all; "
        "0: on all of them",
    ),
    "exclude_history": dict(
        action=_BOOLEAN, help="next item: leave the user's history items out of the ranking"
    ),
    "k": dict(type=_at_least(1), help="HR@k / NDCG@k cutoff"),
    "liked_threshold": dict(type=float, help="liked item: a future rating >= this is liked"),
    "bag_projection_dim": dict(
        type=_at_least(1), help="bag-of-items floor: random-projection width for large catalogs"
    ),
    "bag_projection_above": dict(
        type=int, help="bag-of-items floor: project the bag when the catalog has more items"
    ),
    "knn_top_k": dict(
        type=_at_least(1),
        help="item-kNN of the bag-of-items floor: neighbours kept per item "
        "when the catalog has more than --bag_projection_above items",
    ),
    "probe_max_epochs": dict(type=_at_least(1), help="next_item_softmax probe: epochs, at most"),
    "probe_patience": dict(
        type=_at_least(1), help="next_item_softmax probe: epochs without a gain before it stops"
    ),
    "probe_min_epochs": dict(
        type=_at_least(0), help="next_item_softmax probe: epochs before early stopping may stop"
    ),
}
_GRID_FLAGS = {
    "c_grid": "inverse L2 strengths C of the classification and liked-item probes, "
    "strongest penalty first (chosen by cross-validation inside the labelled users)",
    "next_item_c_grid": "inverse L2 strengths C of the bilinear next-item probe's W",
    "l2_grid": "next_item_softmax probe: L2 values",
}


def add_flags(parser) -> None:
    """The evaluation flags shared with `bt_tf.reproduce` (not --runs / --output_dir).

    `parser`: an `argparse.ArgumentParser` or argument group.
    """
    d, p = EvalSettings(), Protocol()
    add = parser.add_argument
    add(
        "--label_fractions",
        type=fraction_list,
        default=list(DEFAULT_FRACTIONS),
        help="fractions of the users a probe may learn from that keep their labels",
    )
    add("--seeds", type=_at_least(1), default=3, help="label-sampling seeds per fraction (0..n-1)")
    add(
        "--seeds_beyond_claim",
        default=False,
        action=_BOOLEAN,
        help="repeat the label seeds for every task at every fraction below 1 (default: "
        "only for the claim's tasks at its fractions, "
        f"{','.join(f'{f:g}' for f in CLAIM_FRACTIONS)}; the others cannot change the verdict "
        "and get the first seed)",
    )
    add(
        "--tasks",
        default="",
        help=f"comma-separated subset of {', '.join(DEFAULT_TASKS)}, {NEXT_ITEM_SOFTMAX} (the "
        "full-softmax next-item probe), attr_<name> (empty: the default tasks and attributes)",
    )
    add(
        "--probe_folds",
        type=_at_least(0),
        default=p.probe_folds,
        help="K >= 2: cross-fitted, every user scored once by probes trained on the labels "
        "of the other K-1 folds; 0: inductive (train + eval users labelled, test users scored)",
    )
    add(
        "--inner_folds",
        type=_at_least(2),
        default=p.inner_folds,
        help="cross-validation folds of each probe's selection, inside its labelled users",
    )
    add("--floors", default=True, action=_BOOLEAN, help="also evaluate the baseline floors")
    add("--cache", default=True, action=_BOOLEAN, help="reuse results cached in OUTPUT_DIR/cache")
    for name, text in _GRID_FLAGS.items():
        add(f"--{name}", type=_positive_list, default=list(getattr(d, name)), help=text)
    for name, kwargs in _SETTING_FLAGS.items():
        add(f"--{name}", default=getattr(d, name), **kwargs)
    add(
        "--bootstrap_resamples",
        type=_at_least(100),
        default=DEFAULT_RESAMPLES,
        help="resamples of users of the paired bootstrap intervals",
    )
    add("--baseline", default="de", help="model the ratios are relative to (not the claim's)")
    add("--compare", default="bt,bt+de,bt_ft", help="models listed first in the tables")
    add(
        "--claim_models",
        type=_claim_models,
        default=list(CLAIM_MODELS),
        help="MODEL,BASELINE: the one pair the claim judges (MODEL >= 1.08 x BASELINE)",
    )
    add(
        "--claim_users",
        choices=(CLAIM_USERS_ALL, *SPLITS),
        default=CLAIM_USERS_ALL,
        help="score the claim on every scored user (all) or on one split's users only (e.g. "
        "test: users whose labels chose no default), shown beside the all-users claim",
    )
    add(
        "--quiet",
        default=False,
        action=_BOOLEAN,
        help="no progress line and no line per probe (warnings, errors and the result only)",
    )


def settings_from_flags(args: argparse.Namespace) -> EvalSettings:
    """The `EvalSettings` of parsed `add_flags` flags."""
    values = {name: getattr(args, name) for name in _SETTING_FLAGS}
    grids = {name: tuple(getattr(args, name)) for name in _GRID_FLAGS}
    return EvalSettings(**grids, **values)


def protocol_from_flags(args: argparse.Namespace) -> Protocol:
    """The `Protocol` of parsed `add_flags` flags."""
    return Protocol(probe_folds=args.probe_folds, inner_folds=args.inner_folds)


def repeated_fractions(args: argparse.Namespace) -> tuple[float, ...] | None:
    """The fractions probed with every label seed (None: all below 1)."""
    return None if args.seeds_beyond_claim else CLAIM_FRACTIONS


def log_level(args: argparse.Namespace) -> int:
    """INFO, or WARNING under ``--quiet``."""
    return logging.WARNING if args.quiet else logging.INFO


def tasks_from_flags(args: argparse.Namespace) -> list[str] | None:
    return [t.strip() for t in args.tasks.split(",") if t.strip()] or None


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser("bt_tf.evaluate", description=cli.summary(__doc__))
    parser.add_argument("--runs", required=True, help="comma-separated run directories")
    parser.add_argument(
        "--output_dir", default="", help="report dir (empty: report/ beside the first run)"
    )
    add_flags(parser.add_argument_group("evaluation flags (the probes of bt_tf.evaluation.probe)"))
    group = parser.add_argument_group("recommender flags (bt_tf.evaluation.recommender)")
    group.add_argument(
        "--recommender",
        default=False,
        action=_BOOLEAN,
        help="instead of the probes: score the DE runs with their own towers in the SASRec "
        "protocol (100 sampled negatives, HR@10, NDCG@10)",
    )
    group.add_argument(
        "--recommender_seed",
        type=int,
        default=0,
        help="seed of the sampled negatives and of the bootstrap intervals",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=log_level(args), format="%(message)s", force=True)
    run_dirs = [r for r in args.runs.split(",") if r.strip()]
    if not run_dirs:
        raise UserError("--runs names no run directory")
    protocols = set()
    for run_dir in run_dirs:  # before any work
        try:
            protocols.add(runs.read_config(run_dir).get("protocol", "history_future"))
        except FileNotFoundError as err:
            hint = "python -m bt_tf.train --output_dir=RUN writes one"
            raise UserError(f"--runs: {err} ({hint})") from None
        except ValueError as err:
            raise UserError(f"--runs: {err}") from None
    out_dir = args.output_dir or os.path.join(os.path.dirname(run_dirs[0]) or ".", "report")
    if "leave_one_out" in protocols and not args.recommender:
        raise UserError(
            "--runs: leave_one_out runs hold out items, not users: score them as recommenders "
            "(--recommender); the downstream probes need history/future runs"
        )
    # One evaluation per report directory (`bt_tf.locks`): a second one stops at once.
    with locks.hold_dir(out_dir, hint=" or choose another --output_dir"):
        if args.recommender:
            return _recommender(run_dirs, out_dir, args.recommender_seed)
        rows = evaluate_runs(
            run_dirs,
            out_dir,
            label_fractions=args.label_fractions,
            seeds=args.seeds,
            tasks=tasks_from_flags(args),
            include_floors=args.floors,
            settings=settings_from_flags(args),
            protocol=protocol_from_flags(args),
            cache=args.cache,
            bootstrap_resamples=args.bootstrap_resamples,
            baseline=args.baseline,
            compare=[m for m in args.compare.split(",") if m.strip()],
            claim_models=tuple(args.claim_models),
            claim_users=args.claim_users,
            progress=not args.quiet,
            repeated_fractions=repeated_fractions(args),
        )
    print(os.path.join(out_dir, "report.md"))
    return rows


def _recommender(run_dirs: list[str], out_dir: str, seed: int) -> list[dict]:
    """--recommender: every DE and BT+DE run as a recommender (full ranking and 100 sampled
    negatives, in the protocol it was trained in), one dict per run."""
    report = recommender.evaluate_recommender(run_dirs, out_dir, seed=seed)
    print(os.path.join(out_dir, recommender.MARKDOWN_FILE))
    return report["runs"]


if __name__ == "__main__":
    cli.run_main(main)
elif __name__ == cli.SPAWNED_MAIN:
    cli.end_startup()  # a probe worker: its log lines show

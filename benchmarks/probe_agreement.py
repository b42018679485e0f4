"""The project's favorite-genre probe beside a plain cross-validated logistic regression.

    python -m benchmarks.probe_agreement --runs=runs/reproduce_ml-100k/bt,runs/reproduce_ml-100k/de
    python -m benchmarks.probe_agreement --runs=... --fraction=0.05 --seeds=10

For each run (its frozen embeddings of every user) and the same cross-fitted
folds and label samples as `bt_tf.evaluate`: (a) the project's probe
(`tasks.FavoriteGenreTask`: the add-1/2 intercept prior, C chosen by 3-fold
cross-validation inside the labelled users on the log-likelihood, the
simplest candidate first), and (b) a plain scikit-learn pipeline,
`StandardScaler` + `LogisticRegressionCV` (C chosen by 3-fold stratified
cross-validation on accuracy inside the same labelled users, refitted on
them; once scored on accuracy, LogisticRegressionCV's default, once on the
log-loss). All are scored on the fold's users; prints each one's accuracy with
its 95% bootstrap interval over users, their paired differences with their
intervals, and the BT / DE ratio under each probe.
"""

from __future__ import annotations

import dataclasses
import sys

from bt_tf import cli

if __name__ == "__main__":
    cli.startup(sys.argv[1:])  # before TensorFlow and Beam are imported: quiet unless --verbose

import numpy as np

import bt_tf  # noqa: F401  (One Keras)
from bt_tf.evaluation import runner
from bt_tf.evaluation.embedding_cache import data_fingerprint
from bt_tf.evaluation.eval_data import load_eval_data
from bt_tf.evaluation.intervals import Cell, task_intervals
from bt_tf.evaluation.protocol import Protocol, sample_fold_labels
from bt_tf.evaluation.settings import EvalSettings
from bt_tf.evaluation.tasks import FAVORITE_GENRE, get_task
from bt_tf.evaluation.timing import StageClock

# The probes compared: the project's, and LogisticRegressionCV scored on accuracy (its
# default) and on the log-loss (the project's selection metric).
PROBES = {"project": None, "sklearn (accuracy)": None, "sklearn (log-loss)": "neg_log_loss"}


def sklearn_probe(
    x: np.ndarray, y: np.ndarray, labelled: np.ndarray, scored: np.ndarray, seed, scoring=None
):
    """Predictions of StandardScaler + LogisticRegressionCV fitted on ``labelled`` rows
    (``scoring``: LogisticRegressionCV's, default accuracy)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes = np.unique(y[labelled])
    if classes.size < 2:
        return np.full(scored.size, classes[0])
    # Plain 3-fold cross-validation (classes with one labelled user cannot be stratified).
    cv = KFold(3, shuffle=True, random_state=int(np.sum(seed)))
    head = LogisticRegressionCV(Cs=10, cv=cv, max_iter=5000, scoring=scoring)
    model = make_pipeline(StandardScaler(), head)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # folds lacking a class: the pipeline copes
        model.fit(x[labelled], y[labelled])
    return model.predict(x[scored])


def main(argv=None) -> dict:
    parser = cli.ArgumentParser("benchmarks.probe_agreement", description=cli.summary(__doc__))
    parser.add_argument("--runs", required=True, help="comma-separated run dirs (bt,de)")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args(argv)
    run_dirs = [r for r in args.runs.split(",") if r]
    runs = runner.read_runs(run_dirs)
    data = load_eval_data(runs[0].config["artifact_dir"], width=int(runs[0].config["max_len"]),
                          tasks=[FAVORITE_GENRE])  # fmt: skip
    settings, protocol = EvalSettings(), Protocol()
    ctx = runner._context(data, protocol, settings, "train", (FAVORITE_GENRE,))
    y = ctx.labels[FAVORITE_GENRE]
    task = get_task(FAVORITE_GENRE)
    cells, scored_users = {}, None
    for run in runs:
        contender = runner.run_contender(run, data, ctx.population, data_fp=data_fingerprint(data),
                                         cache_dir=None, settings=settings,
                                         clock=StageClock())  # fmt: skip
        correct = {probe: [] for probe in PROBES}
        for seed in range(args.seeds):
            preds, users = {probe: [] for probe in PROBES}, []
            for fold in ctx.folds:
                units, _ = task.score_fold(ctx, contender, fold, args.fraction, seed)
                labelled = sample_fold_labels(y, fold, args.fraction, seed)
                preds["project"].append(units.pred)
                for probe, scoring in PROBES.items():
                    if probe != "project":
                        preds[probe].append(sklearn_probe(
                            contender.users, y, labelled, units.user, [seed, fold.index], scoring
                        ))  # fmt: skip
                users.append(units.user)
            users = np.concatenate(users)
            for probe in PROBES:
                correct[probe].append(np.concatenate(preds[probe]) == y[users])
        scored_users = users
        name = f"{run.name}@{run.seed}" if run.seed else run.name
        for probe in PROBES:
            cells[("accuracy", args.fraction, f"{name}: {probe}")] = np.stack(
                correct[probe]).astype(float)  # fmt: skip
    n = scored_users.size
    unit_user = np.arange(n)
    names = sorted({k[2].split(": ")[0] for k in cells})
    pairs = [(f"{m}: project", f"{m}: {p}") for m in names for p in PROBES if p != "project"]
    if len(names) >= 2:
        pairs += [(f"{names[0]}: {p}", f"{names[1]}: {p}") for p in PROBES]
    out = task_intervals({k: Cell("user_mean", v, unit_user) for k, v in cells.items()}, n, pairs,
                         n_resamples=args.resamples)  # fmt: skip
    print(f"favorite genre accuracy at {100 * args.fraction:g}% labels, {n} users, "
          f"{args.seeds} seeds, 5 cross-fitted folds")  # fmt: skip
    for (_, _, model), (value, (lo, hi)) in out["cells"].items():
        print(f"  {model:28s} {value:.3f} [{lo:.3f}, {hi:.3f}]")
    for c in out["comparisons"]:
        print(f"  {c.model} - {c.reference}: difference {c.difference:+.3f} "
              f"[{c.difference_ci[0]:+.3f}, {c.difference_ci[1]:+.3f}], ratio {c.ratio:.3f} "
              f"[{c.ratio_ci[0]:.3f}, {c.ratio_ci[1]:.3f}]")  # fmt: skip
    return {
        "cells": out["cells"],
        "comparisons": [dataclasses.asdict(c) for c in out["comparisons"]],
    }


if __name__ == "__main__":
    cli.run_main(main)

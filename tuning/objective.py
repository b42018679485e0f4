"""The search objective: a downstream score of frozen embeddings on EVAL users.

Never the Barlow Twins loss (its scale depends on lambda, so losses of two
trials are not comparable) and never the test split: `evaluate_objective`
embeds exactly the splits in `SEARCH_SPLITS` (train users give the probe's
labels, eval users its score), so the test split stays untouched for the
final report (`bt_tf.evaluate`).

Objectives (``kind`` -> metric name reported to KerasTuner, higher is better):

* ``favorite_genre`` -> ``eval_favorite_genre_accuracy``: the future favorite
  genre/category, logistic regression (sklearn, C=1, standardized features)
  on all train users, accuracy on eval users: the same recipe as the quick
  probe of `bt_tf.train`. Nothing is selected on eval, so the score is unbiased.
* ``next_item`` -> ``eval_next_item_hr@10``: the first future item over the
  full catalog (history items excluded), a softmax probe
  (`bt_tf.evaluation.probe.train_softmax_probe`) on train users whose L2 and stopping
  epoch are selected by eval HR@10 (the probes' standard-error rule, starting
  from the prior predictor); the score is that selected eval HR@10 (slightly
  optimistic, equally so for every trial).
* ``claim`` -> ``cv_claim_vs_svd``: all three tasks of the claim at scarce
  labels, cross-fitted (`crossfit_objective`): the trial's run and the ``svd``
  floor (the user factors of a rank-d SVD of the same histories) are probed
  by `bt_tf.evaluate`'s cross-fitted protocol over the train and eval users
  (5 folds: every one of them scored, by probes trained and selected on the
  other folds' labels), at ``fractions`` (default 5% and 10%) with
  ``seeds`` label seeds. Per task of `bt_tf.evaluation.tasks.CLAIM_METRICS`
  the ratio run / svd of its claim metric (mean over the fractions); the
  objective is the mean of the three ratios (so each fold weighs by its
  users: the mean over folds, not one lucky fold), or with ``stat="lower"``
  the low end of its 95% paired bootstrap interval. The intervals are
  reported with the trial (``trials.md``). 1.0 = as good as SVD features.
* ``liked_item`` -> ``eval_liked_item_auc``: future rating >= 4 for (user,
  item) pairs, `bt_tf.evaluation.probe.train_pair_probe` with the encoder's item
  embeddings (L2 and epoch selected by the eval log-likelihood, the probes'
  default), AUC on eval pairs.

The three single-task objectives use all train and all eval labels (a 100%
label fraction) and score eval users only; ``claim`` scores both splits at
scarce labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from bt_tf import features as F
from bt_tf.data import dataset
from bt_tf.data.embeddings import embed_split
from bt_tf.evaluation import labels, metrics, scores
from bt_tf.evaluation.probe import train_pair_probe, train_softmax_probe
from bt_tf.evaluation.protocol import Protocol
from bt_tf.evaluation.runner import evaluate_records
from bt_tf.evaluation.tasks import CLAIM_METRICS
from bt_tf.training import genre_probe

SEARCH_SPLITS = genre_probe.SPLITS  # the only splits a search reads: train, eval
OBJECTIVES = {
    "favorite_genre": "eval_favorite_genre_accuracy",
    "next_item": "eval_next_item_hr@10",
    "liked_item": "eval_liked_item_auc",
    "claim": "cv_claim_vs_svd",
}
PROBE_OBJECTIVES = ("favorite_genre", "next_item", "liked_item")  # `evaluate_objective`'s
CLAIM_REFERENCE = "svd"  # the floor of the embedding's own size
STATS = ("mean", "lower")
_K = 10
_KEEP = {
    "favorite_genre": [F.FUTURE_GENRE_IDS],
    "next_item": [F.FUTURE_ITEM_IDS, F.ITEMS],
    "liked_item": [F.FUTURE_ITEM_IDS, F.FUTURE_RATINGS],
}


def objective_name(kind: str) -> str:
    """``"favorite_genre"`` -> ``"eval_favorite_genre_accuracy"`` (see `OBJECTIVES`)."""
    if kind not in OBJECTIVES:
        raise ValueError(f"objective {kind!r}: expected one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[kind]


def evaluate_objective(
    encoder,
    artifact_dir: str,
    kind: str = "favorite_genre",
    *,
    max_len: int | None = None,
    seed: int = 0,
    item_embeddings: np.ndarray | None = None,
) -> dict[str, float]:
    """Scores a trained encoder for the search, reading only train and eval users.

    Args:
      encoder: `encoder(items [B, L] int32, training=False) -> [B, d]`
        (e.g. from `bt_tf.export.restore_encoder`).
      artifact_dir: preprocessing output; only its ``Split-train`` and
        ``Split-eval`` shards, metadata and vocab are read.
      kind: a key of `OBJECTIVES`.
      max_len: history width fed to the encoder (default: the artifact's).
      seed: probe seed (minibatch order; sklearn's solver state).
      item_embeddings: ``[vocab, e]`` item table for ``liked_item``; default
        the encoder's ``item_embedding`` weights when it has them, else one-hot.

    Returns:
      ``{objective_name(kind): score, "eval_users": n}`` (floats, so the dict
      can be reported to KerasTuner as a trial's metrics).
    """
    name = objective_name(kind)
    if kind not in PROBE_OBJECTIVES:
        raise ValueError(f"objective {kind!r} scores a trained run: use crossfit_objective")
    emb, kept = {}, {}
    for split in SEARCH_SPLITS:
        emb[split], kept[split] = embed_split(
            encoder, artifact_dir, split, max_len=max_len, keep=_KEEP[kind]
        )
    if kind == "favorite_genre":
        score, n = _favorite_genre(emb, kept, seed)
    elif kind == "next_item":
        num_items = int(dataset.load_metadata(artifact_dir)["vocab_sizes"]["items"])
        score, n = _next_item(emb, kept, num_items, seed)
    else:
        num_items = int(dataset.load_metadata(artifact_dir)["vocab_sizes"]["items"])
        if item_embeddings is None and hasattr(encoder, "item_embedding"):
            item_embeddings = np.asarray(encoder.item_embedding.embeddings.numpy())
        score, n = _liked_item(emb, kept, num_items, item_embeddings, seed)
    if not np.isfinite(score):
        raise ValueError(f"{name} is {score} (non-finite embeddings?)")
    return {name: float(score), "eval_users": float(n)}


def _favorite_genre(emb, kept, seed: int) -> tuple[float, int]:
    data = genre_probe.labelled(emb, kept)
    if not len(data["train"][1]) or not len(data["eval"][1]):
        raise ValueError("favorite_genre needs train and eval users with future genres")
    scores = genre_probe.fit_and_score(data, seed)
    return scores["favorite_genre_accuracy"], scores["eval_users"]


def _next_item(emb, kept, num_items: int, seed: int) -> tuple[float, int]:
    targets, rows = {}, {}
    for split in SEARCH_SPLITS:
        t = labels.first_future_item(kept[split][F.FUTURE_ITEM_IDS])
        targets[split] = t
        rows[split] = np.flatnonzero((t >= F.NUM_RESERVED) & (t < num_items))
        if not rows[split].size:
            raise ValueError(f"next_item: no {split} user has an in-vocabulary next item")
    ev = rows["eval"]
    y_eval = targets["eval"][ev]
    history_eval = kept["eval"][F.ITEMS][ev]

    def hr_rows(scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
        ranks = metrics.target_ranks(scores, y_eval[idx], exclude=history_eval[idx])
        return metrics.hits_at_k(ranks, _K)

    tr = rows["train"]
    probe = train_softmax_probe(
        emb["train"][tr],
        targets["train"][tr],
        emb["eval"][ev],
        y_eval,
        num_items,
        seed=seed,
        select_metric=hr_rows,
    )
    return float(probe.eval_metric), int(ev.size)


def _liked_item(emb, kept, num_items: int, item_embeddings, seed: int) -> tuple[float, int]:
    pairs = {
        split: labels.liked_item_pairs(
            kept[split][F.FUTURE_ITEM_IDS], kept[split][F.FUTURE_RATINGS]
        )
        for split in SEARCH_SPLITS
    }
    for split, p in pairs.items():
        if not len(p) or np.unique(p.labels).size < 2:
            raise ValueError(f"liked_item: {split} pairs need both liked and not-liked labels")
    pair_probe = train_pair_probe(
        emb["train"],
        pairs["train"],
        emb["eval"],
        pairs["eval"],
        item_emb=item_embeddings,
        num_items=num_items,
        seed=seed,
    )
    logits = pair_probe.predict_logits(emb["eval"], pairs["eval"])
    n_users = int(np.unique(pairs["eval"].user_index).size)
    return float(metrics.roc_auc(pairs["eval"].labels, logits)), n_users


@dataclasses.dataclass(frozen=True)
class CrossfitSpec:
    """How the ``claim`` objective probes a trial (see the module docstring)."""

    fractions: tuple[float, ...] = (0.05, 0.1)
    seeds: int = 2
    probe_folds: int = 5
    stat: str = "mean"
    n_resamples: int = 1000

    def __post_init__(self):
        if not self.fractions or not all(0 < f <= 1 for f in self.fractions):
            raise ValueError(f"objective fractions {self.fractions}: each in (0, 1]")
        if self.seeds < 1 or self.probe_folds < 2:
            raise ValueError("the claim objective needs >= 1 label seed and >= 2 probe folds")
        if self.stat not in STATS:
            raise ValueError(f"objective stat {self.stat!r}: expected one of {STATS}")


def crossfit_objective(
    run_dir: str, name: str, cache_dir: str, spec: CrossfitSpec = CrossfitSpec(),
    *, workers: int | None = None,
) -> dict[str, float]:  # fmt: skip
    """The ``claim`` objective of one trained run (named ``name``, e.g. its trial).

    ``cache_dir`` holds the probes' cache; share it between the trials of a
    search, so the ``svd`` floor is probed once (its cache key is its
    features, not the trial).

    Returns floats: ``cv_claim_vs_svd``, ``claim_ratio`` and its ``_lo``/``_hi``,
    and per task ``<task>_vs_svd`` with ``_lo``/``_hi``.
    """
    records = evaluate_records(
        [run_dir], cache_dir, names=[name], label_fractions=spec.fractions,
        seeds=spec.seeds, tasks=list(CLAIM_METRICS), include_floors=(CLAIM_REFERENCE,),
        protocol=Protocol(probe_folds=spec.probe_folds, users=tuple(SEARCH_SPLITS)),
        workers=workers,
    ).records  # fmt: skip
    res = scores.claim_objective(
        records, _K, model=name, reference=CLAIM_REFERENCE, fractions=spec.fractions,
        n_resamples=spec.n_resamples,
    )  # fmt: skip
    lo, hi = res["ci95"]
    out = {"claim_ratio": res["ratio"], "claim_ratio_lo": lo, "claim_ratio_hi": hi}
    out[OBJECTIVES["claim"]] = res["ratio"] if spec.stat == "mean" else lo
    for task, cell in res["tasks"].items():
        out[f"{task}_vs_svd"] = cell["ratio"]
        out[f"{task}_vs_svd_lo"], out[f"{task}_vs_svd_hi"] = cell["ci95"]
    if not np.isfinite(out[OBJECTIVES["claim"]]):
        raise ValueError(f"{OBJECTIVES['claim']} is not finite: {res}")
    return {k: float(v) for k, v in out.items()}


def claim_columns(metrics: Sequence[str]) -> list[str]:
    """The value names of `crossfit_objective` that have intervals, in display order."""
    names = ["claim_ratio", *(f"{t}_vs_svd" for t in CLAIM_METRICS)]
    return [n for n in names if n in metrics]

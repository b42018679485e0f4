"""The downstream tasks, one registry: how each derives its labels, is probed and floored.

Protocol (DESIGN.md, "Downstream evaluation"), for one model's frozen
embeddings and each label fraction and seed (a `ProbeRun`):

1. `sample_label_fraction` draws a seeded (stratified) fraction of
   TRAIN users that keep their labels;
2. a linear probe (`probe.train_softmax_probe`, `probe.train_pair_probe`) is
   trained on them, its L2 strength and stopping epoch selected on the SAME
   fraction of EVAL users (`sample_selection_users`);
3. it is scored once on TEST users (`bt_tf.evaluation.metrics`), giving one
   `ResultRow` per metric.

`TASKS` maps a name to its `Task`; any other name (``attr_<name>``, or labels
passed in memory) is a `ClassificationTask` (`get_task`). `evaluate_embeddings`
runs every task for one model and returns the rows as dicts
(``{"model", "task", "metric", "fraction", "seed", "value", ...}``, the layout
of ``results.json`` and the caches) that `bt_tf.evaluation.report` aggregates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bt_tf import features as F
from bt_tf.evaluation import metrics
from bt_tf.evaluation.labels import (
    SPLITS,
    as_pairs,
    check_splits,
    favorite_genre,
    first_future_item,
    item_counts,
    liked_item_pairs,
    next_item_masks,
    pair_user_sample,
    sample_label_fraction,
    sample_selection_users,
    users_with_pairs,
)
from bt_tf.evaluation.probe import train_pair_probe, train_softmax_probe
from bt_tf.evaluation.settings import DEFAULT_FRACTIONS, MIN_SELECTION_USERS

__all__ = [
    "NEXT_ITEM",
    "FAVORITE_GENRE",
    "LIKED_ITEM",
    "DEFAULT_TASKS",
    "ResultRow",
    "ProbeRun",
    "Task",
    "ClassificationTask",
    "FavoriteGenreTask",
    "NextItemTask",
    "LikedItemTask",
    "TASKS",
    "get_task",
    "result_rows",
    "evaluate_embeddings",
]

NEXT_ITEM = "next_item"
FAVORITE_GENRE = "favorite_genre"
LIKED_ITEM = "liked_item"
DEFAULT_TASKS = (NEXT_ITEM, FAVORITE_GENRE, LIKED_ITEM)  # + every attr_<name> of the data


@dataclasses.dataclass(frozen=True)
class ResultRow:
    """One metric of one probe (or floor) at one (fraction, seed).

    ``details`` are the row's further columns in their order (sample sizes,
    the chosen ``l2`` and ``best_epoch``, ...; see `evaluate_embeddings`).
    """

    model: str
    task: str
    metric: str
    fraction: float
    seed: int
    value: float
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        """The row as ``results.json`` and the caches store it."""
        return {
            "model": self.model,
            "task": self.task,
            "metric": self.metric,
            "fraction": float(self.fraction),
            "seed": int(self.seed),
            "value": float(self.value),
        } | dict(self.details)


def result_rows(
    model: str,
    task: str,
    fraction: float,
    seed: int,
    values: Mapping[str, float],
    details: Mapping[str, Any],
) -> list[ResultRow]:
    """One `ResultRow` per ``metric -> value``, all with the same ``details``."""
    return [ResultRow(model, task, m, fraction, seed, v, details) for m, v in values.items()]


@dataclasses.dataclass(frozen=True, eq=False)
class ProbeRun:
    """One probe to train and score: a model's features on one task at one (fraction, seed).

    Attributes:
        model: name stored in every row.
        emb: split -> ``[n_split, d]`` user features (dense or scipy sparse).
        labels: split -> that task's labels (see `evaluate_embeddings`).
        fraction, seed: label fraction of train users and sampling seed (the
            seed also orders the probe's minibatches).
        num_items: item vocabulary size incl. reserved ids (next/liked item).
        item_emb: ``[num_items, e]`` item embeddings (liked item; None: one-hot).
        history: split -> padded ``[n, L]`` history item ids.
        exclude_history: remove history items from the next-item ranking.
        k: cutoff of HR@k / NDCG@k.
        min_selection_users: selection sample floor (`sample_selection_users`).
        probe_kwargs: passed to `probe.train_softmax_probe`.
    """

    model: str
    emb: Mapping[str, Any]
    labels: Mapping[str, Any]
    fraction: float
    seed: int
    num_items: int | None = None
    item_emb: np.ndarray | None = None
    history: Mapping[str, np.ndarray] | None = None
    exclude_history: bool = True
    k: int = 10
    min_selection_users: int = MIN_SELECTION_USERS
    probe_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def train_kwargs(self) -> dict:
        """`train_softmax_probe` keyword arguments: ``probe_kwargs`` and the seed."""
        return dict(self.probe_kwargs, seed=self.seed)

    def rows(self, task: str, values: Mapping[str, float], **details) -> list[ResultRow]:
        return result_rows(self.model, task, self.fraction, self.seed, values, details)


def _int_labels(per_split: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {s: np.asarray(per_split[s]).astype(np.int64).reshape(-1) for s in per_split}


class Task:
    """A downstream task. Subclasses say how labels are derived, probed and floored."""

    name: str
    reads: tuple[str, ...] = ()  # example features besides the future items it needs

    def unavailable(self, meta: Mapping[str, Any]) -> str | None:
        """Why the data (its metadata) cannot support the task, or None."""
        return None

    def derive(self, kept: Mapping[str, np.ndarray], *, liked_threshold: float) -> Any:
        """One split's labels from the features `eval_data.load_eval_data` kept."""
        raise NotImplementedError

    def probe(self, run: ProbeRun) -> list[ResultRow]:
        """Trains the probe of ``run`` and scores it on the test users."""
        raise NotImplementedError

    def majority(self, per_split, fraction: float, seed: int, model: str) -> list[ResultRow]:
        """The majority-class floor's rows (none where it does not apply)."""
        return []


class ClassificationTask(Task):
    """``[n]`` class ids per split, -1 = unknown (skipped); stratified sampling;
    accuracy and balanced accuracy. Labels ``attr_<name>`` are the user attribute."""

    def __init__(self, name: str):
        self.name = name
        self.reads = (name,) if name.startswith(F.ATTRIBUTE_PREFIX) else ()

    def derive(self, kept, *, liked_threshold):
        return kept[self.name].astype(np.int64).reshape(-1)

    def probe(self, run: ProbeRun) -> list[ResultRow]:
        y = _int_labels(run.labels)
        for s in SPLITS:
            if y[s].shape[0] != run.emb[s].shape[0]:
                raise ValueError(
                    f"labels[{self.name!r}][{s!r}] has {y[s].shape[0]} users, "
                    f"emb[{s!r}] {run.emb[s].shape[0]}."
                )
        num_classes = int(max(v.max(initial=-1) for v in y.values())) + 1
        tr = sample_label_fraction(y["train"], run.fraction, run.seed)
        ev = sample_selection_users(
            y["eval"], run.fraction, run.seed, min_users=run.min_selection_users
        )
        te = np.flatnonzero(y["test"] >= 0)
        probe = train_softmax_probe(
            run.emb["train"][tr],
            y["train"][tr],
            run.emb["eval"][ev],
            y["eval"][ev],
            num_classes,
            **run.train_kwargs(),
        )
        pred = probe.predict(run.emb["test"][te])
        values = {
            "accuracy": metrics.accuracy(y["test"][te], pred),
            "balanced_accuracy": metrics.balanced_accuracy(y["test"][te], pred),
        }
        return run.rows(
            self.name,
            values,
            n_train=int(tr.size),
            n_eval=int(ev.size),
            n_eval_labelled=int(np.sum(y["eval"] >= 0)),
            n_test=int(te.size),
            l2=probe.l2,
            best_epoch=probe.best_epoch,
        )

    def majority(self, per_split, fraction, seed, model):
        y_tr = np.asarray(per_split["train"]).astype(np.int64).reshape(-1)
        y_te = np.asarray(per_split["test"]).astype(np.int64).reshape(-1)
        y_te = y_te[y_te >= 0]
        tr = sample_label_fraction(y_tr, fraction, seed)
        c = metrics.majority_class(y_tr[tr])
        pred = np.full_like(y_te, c)
        values = {
            "accuracy": metrics.accuracy(y_te, pred),
            "balanced_accuracy": metrics.balanced_accuracy(y_te, pred),
        }
        details = dict(n_train=int(tr.size), n_test=int(y_te.size), majority=c)
        return result_rows(model, self.name, fraction, seed, values, details)


class FavoriteGenreTask(ClassificationTask):
    """The most frequent genre among the future items (`favorite_genre`)."""

    def __init__(self):
        super().__init__(FAVORITE_GENRE)

    def unavailable(self, meta):
        if int(meta["vocab_sizes"]["genres"]) <= F.NUM_RESERVED:
            return "no item has a genre/category (e.g. no --items_file)"
        return None

    def derive(self, kept, *, liked_threshold):
        return favorite_genre(kept[F.FUTURE_GENRE_IDS])


class NextItemTask(Task):
    """The first future item ranked over the full catalog: HR@k, NDCG@k (needs
    ``num_items``). Users without a future item (0) are skipped; OOV targets are
    never trained on and count as misses on test. No majority floor (see
    `floors.popularity_floor`)."""

    name = NEXT_ITEM

    def derive(self, kept, *, liked_threshold):
        return first_future_item(kept[F.FUTURE_ITEM_IDS].astype(np.int64))

    def probe(self, run: ProbeRun) -> list[ResultRow]:
        _check_next_item_run(run)
        t = _int_labels(run.labels)
        trainable_tr, _ = next_item_masks(t["train"], run.num_items)
        trainable_ev, _ = next_item_masks(t["eval"], run.num_items)
        _, scored_te = next_item_masks(t["test"], run.num_items)
        # Unknown = -1 so sample_label_fraction skips them; no stratification by item.
        tr = sample_label_fraction(
            np.where(trainable_tr, t["train"], -1), run.fraction, run.seed, stratify=False
        )
        ev = sample_selection_users(
            np.where(trainable_ev, 0, -1),
            run.fraction,
            run.seed,
            stratify=False,
            min_users=run.min_selection_users,
        )
        te = np.flatnonzero(scored_te)
        exclude = run.exclude_history
        probe = train_softmax_probe(
            run.emb["train"][tr],
            t["train"][tr],
            run.emb["eval"][ev],
            t["eval"][ev],
            run.num_items,
            **_next_item_kwargs(run, t["eval"][ev], run.history["eval"][ev] if exclude else None),
        )
        ranks = metrics.target_ranks(
            probe.score_fn(run.emb["test"][te]),
            t["test"][te],
            exclude=run.history["test"][te] if exclude else None,
        )
        k = run.k
        values = {
            f"hr@{k}": metrics.hits_at_k(ranks, k).mean(),
            f"ndcg@{k}": metrics.ndcg_gains_at_k(ranks, k).mean(),
        }
        return run.rows(
            NEXT_ITEM,
            values,
            n_train=int(tr.size),
            n_eval=int(ev.size),
            n_eval_labelled=int(trainable_ev.sum()),
            n_test=int(te.size),
            l2=probe.l2,
            best_epoch=probe.best_epoch,
            exclude_history=bool(exclude),
            k=int(k),
        )


def _check_next_item_run(run: ProbeRun) -> None:
    if run.num_items is None:
        raise ValueError("next_item needs num_items (item vocab size incl. reserved ids).")
    history = run.history
    if run.exclude_history and (history is None or any(s not in history for s in ("eval", "test"))):
        raise ValueError(
            "exclude_history=True needs history={'eval': [n, L], 'test': [n, L]} padded "
            "item ids; pass them or set exclude_history=False."
        )


def _next_item_kwargs(run: ProbeRun, y_ev: np.ndarray, hist_ev: np.ndarray | None) -> dict:
    """Probe arguments of next item: selected by eval NDCG@k (history excluded), started
    from the popularity ranking of the label-free train histories when given."""
    kwargs = run.train_kwargs()

    def ndcg_rows(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
        ex = hist_ev[rows] if hist_ev is not None else None
        ranks = metrics.target_ranks(scores, y_ev[rows], exclude=ex)
        return metrics.ndcg_gains_at_k(ranks, run.k)

    kwargs.setdefault("select_metric", ndcg_rows)
    if run.history is not None and "train" in run.history:
        kwargs.setdefault("prior_counts", item_counts(run.history["train"], run.num_items))
    return kwargs


class LikedItemTask(Task):
    """For each future (user, item): liked? `Pairs` per split; users are
    sampled, then all their pairs used; accuracy and AUC."""

    name = LIKED_ITEM

    def unavailable(self, meta):
        if meta.get("has_ratings") is False:
            return "the data has no ratings (no --rating_col)"
        return None

    def derive(self, kept, *, liked_threshold):
        return liked_item_pairs(
            kept[F.FUTURE_ITEM_IDS].astype(np.int64),
            kept[F.FUTURE_RATINGS],
            threshold=liked_threshold,
        )

    def probe(self, run: ProbeRun) -> list[ResultRow]:
        p = {s: as_pairs(run.labels[s]) for s in SPLITS}
        emb = run.emb
        tr = pair_user_sample(p["train"], emb["train"].shape[0], run.fraction, run.seed)
        has_eval = users_with_pairs(p["eval"], emb["eval"].shape[0])
        ev_users = sample_selection_users(
            has_eval, run.fraction, run.seed, stratify=False, min_users=run.min_selection_users
        )
        ev = np.flatnonzero(np.isin(p["eval"].user_index, ev_users))
        pair_probe = train_pair_probe(
            emb["train"],
            p["train"].subset(tr),
            emb["eval"],
            p["eval"].subset(ev),
            item_emb=run.item_emb,
            num_items=run.num_items,
            **run.train_kwargs(),
        )
        logits = pair_probe.predict_logits(emb["test"], p["test"])
        y = p["test"].labels
        values = {
            "accuracy": metrics.accuracy(y, (logits > 0).astype(np.int64)),
            "auc": metrics.roc_auc(y, logits),
        }
        return run.rows(
            LIKED_ITEM,
            values,
            n_train=int(tr.size),
            n_eval=int(ev.size),
            n_eval_labelled=len(p["eval"]),
            n_train_users=int(np.unique(p["train"].user_index[tr]).size),
            n_eval_users=int(ev_users.size),
            n_eval_users_labelled=int(np.sum(has_eval >= 0)),
            n_test=len(p["test"]),
            l2=pair_probe.probe.l2,
            best_epoch=pair_probe.probe.best_epoch,
        )

    def majority(self, per_split, fraction, seed, model):
        p_tr, p_te = as_pairs(per_split["train"]), as_pairs(per_split["test"])
        n_users = int(p_tr.user_index.max(initial=-1)) + 1
        tr = pair_user_sample(p_tr, n_users, fraction, seed)
        c = metrics.majority_class(p_tr.labels[tr])
        y = p_te.labels
        values = {
            "accuracy": metrics.accuracy(y, np.full_like(y, c)),
            "auc": metrics.roc_auc(y, np.zeros(y.shape)),  # a constant: 0.5
        }
        details = dict(n_train=int(tr.size), n_test=len(p_te), majority=c)
        return result_rows(model, LIKED_ITEM, fraction, seed, values, details)


TASKS: dict[str, Task] = {t.name: t for t in (NextItemTask(), FavoriteGenreTask(), LikedItemTask())}


def get_task(name: str) -> Task:
    """The registered task ``name``, else a `ClassificationTask` on labels of that name."""
    return TASKS.get(name) or ClassificationTask(name)


def evaluate_embeddings(
    emb: Mapping[str, Any],
    labels: Mapping[str, Mapping[str, Any]],
    *,
    model: str,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: Sequence[int] = (0, 1, 2),
    num_items: int | None = None,
    item_emb: np.ndarray | None = None,
    history: Mapping[str, np.ndarray] | None = None,
    exclude_history: bool = True,
    k: int = 10,
    min_selection_users: int = MIN_SELECTION_USERS,
    probe_kwargs: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Every downstream task for one model's frozen user embeddings.

    Args:
      emb: split ("train", "eval", "test") -> ``[n_split, d]`` user embeddings
        (dense, or sparse e.g. `floors.bag_of_items_features`).
      labels: task -> split -> labels, the task chosen by name (`get_task`):
        ``"next_item"``: ``[n]`` first future item ids (`NextItemTask`);
        ``"liked_item"``: `Pairs` or a dict with the same fields
        (`LikedItemTask`); any other name (``"favorite_genre"``,
        ``"attr_gender"``, ...): ``[n]`` class ids, -1 = unknown
        (`ClassificationTask`).
      model, fractions, seeds, num_items, item_emb, history, exclude_history,
        k, min_selection_users, probe_kwargs: as in `ProbeRun`, for every
        (task, fraction, seed). ``exclude_history`` (default True: in
        MovieLens a user rates a movie once, so history items are never a
        correct next item) needs ``history["eval"]``, ``history["test"]``.

    Returns:
      Rows ``{"model", "task", "metric", "fraction", "seed", "value",
      "n_train", "n_eval", "n_eval_labelled", "n_test", "l2", "best_epoch"}``
      (+ ``"exclude_history"``, ``"k"`` for next item; liked item counts
      pairs in ``n_*`` and users in ``n_train_users``, ``n_eval_users``,
      ``n_eval_users_labelled``). ``n_eval`` labels selected the probe, out of
      ``n_eval_labelled``.
    """
    for split in SPLITS:
        if split not in emb:
            raise ValueError(f"emb lacks split {split!r}; need train, eval, test.")
    common = dict(
        model=model,
        emb=emb,
        num_items=num_items,
        item_emb=item_emb,
        history=history,
        exclude_history=exclude_history,
        k=k,
        min_selection_users=min_selection_users,
        probe_kwargs=dict(probe_kwargs or {}),
    )
    rows: list[dict] = []
    for name, per_split in labels.items():
        check_splits(name, per_split)
        task = get_task(name)
        for fraction in fractions:
            for seed in seeds:
                run = ProbeRun(labels=per_split, fraction=fraction, seed=seed, **common)
                rows += [r.to_dict() for r in task.probe(run)]
    return rows

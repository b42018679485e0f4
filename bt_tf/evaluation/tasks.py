"""The downstream tasks, one registry: how each derives its labels, is probed and scored.

Protocol (DESIGN.md, "Downstream evaluation"), for one contender's frozen
features (`contenders.Contender`), one label fraction and seed, and each fold
of the evaluated population (`protocol.Protocol`):

1. `protocol.sample_fold_labels` draws a seeded (stratified) fraction of the
   fold's pool that keep their labels;
2. a probe of the task's family (`linear.SoftmaxFamily` for classes and liked
   item, `linear.BilinearFamily` for next item) is selected by
   cross-validation INSIDE those labelled users and refitted on them
   (`linear.select_and_fit`);
3. it scores the fold's scored users, one `Units` row per scored user (or
   (user, item) pair for liked item): the per-user contributions that every
   figure and interval is computed from (`metric_values`, `intervals`).

`TASKS` maps a name to its `Task`; any other name (``attr_<name>``) is a
`ClassificationTask` (`get_task`). `probe_contender` runs one task for one
contender at one (fraction, seed) over every fold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bt_tf import features as F
from bt_tf.evaluation import metrics
from bt_tf.evaluation.contenders import Contender
from bt_tf.evaluation.labels import (
    Pairs,
    favorite_genre,
    first_future_item,
    liked_item_pairs,
    users_with_pairs,
)
from bt_tf.evaluation.linear import (
    PRIOR,
    SoftmaxFamily,
    candidate_name,
    inner_folds,
    item_sample,
    select_and_fit,
)
from bt_tf.evaluation.protocol import Fold, Population, Protocol, sample_fold_labels
from bt_tf.evaluation.settings import EvalSettings

__all__ = [
    "NEXT_ITEM",
    "NEXT_ITEM_SOFTMAX",
    "FAVORITE_GENRE",
    "LIKED_ITEM",
    "DEFAULT_TASKS",
    "OPT_IN_TASKS",
    "CLAIM_METRICS",
    "Units",
    "ProbeContext",
    "Task",
    "ClassificationTask",
    "FavoriteGenreTask",
    "NextItemTask",
    "NextItemSoftmaxTask",
    "LikedItemTask",
    "TASKS",
    "get_task",
    "probe_contender",
]

NEXT_ITEM = "next_item"
NEXT_ITEM_SOFTMAX = "next_item_softmax"  # the full-softmax variant (opt-in: --tasks)
FAVORITE_GENRE = "favorite_genre"
LIKED_ITEM = "liked_item"
DEFAULT_TASKS = (NEXT_ITEM, FAVORITE_GENRE, LIKED_ITEM)  # + every attr_<name> of the data
OPT_IN_TASKS = (NEXT_ITEM_SOFTMAX,)  # evaluated only when asked for (--tasks)
# The paper's claim: task -> the metric it is decided on.
CLAIM_METRICS = {NEXT_ITEM: "ndcg@10", FAVORITE_GENRE: "balanced_accuracy", LIKED_ITEM: "auc"}

_SELECTION_STREAM = 7  # seeds the inner folds apart from the label sample
_SAMPLE_STREAM = 11  # seeds the next-item fits' item sample
_INT_FIELDS = ("item", "pred", "fold")  # `Units` fields whose missing value is -1


@dataclasses.dataclass(frozen=True)
class Units:
    """Per scored unit (a user, or a (user, item) pair for liked item), aligned arrays.

    ``user`` population rows; ``item`` the pair's item (-1: none); ``label``
    the truth (class, next item, liked 0/1); ``pred`` the predicted class (-1:
    none); ``score`` the liked logit (NaN: none); ``rank`` the next item's
    1-based full-catalog rank (inf: a miss; NaN: none); ``fold`` the fold whose
    probe scored it (-1: not set).
    """

    user: np.ndarray
    label: np.ndarray
    item: np.ndarray | None = None
    pred: np.ndarray | None = None
    score: np.ndarray | None = None
    rank: np.ndarray | None = None
    fold: np.ndarray | None = None

    FIELDS = ("user", "item", "label", "pred", "score", "rank", "fold")

    def __len__(self) -> int:
        return int(self.user.size)

    def column(self, name: str) -> np.ndarray:
        """The field as a full array (the missing value where it is None)."""
        value = getattr(self, name)
        if value is not None:
            return value
        fill = -1 if name in _INT_FIELDS else np.nan
        return np.full(len(self), fill, dtype=np.int64 if fill == -1 else np.float64)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: self.column(name) for name in self.FIELDS}

    @staticmethod
    def concat(parts: Sequence[Units]) -> Units:
        fields = {}
        for name in Units.FIELDS:
            present = [getattr(p, name) is not None for p in parts]
            if any(present):
                fields[name] = np.concatenate([p.column(name) for p in parts])
            else:
                fields[name] = None
        if not parts:
            fields["user"] = fields["label"] = np.zeros(0, np.int64)
        return Units(**fields)

    @staticmethod
    def from_arrays(arrays: Mapping[str, np.ndarray]) -> Units:
        """Inverse of `arrays` (fields that are all "missing" become None)."""
        out = {}
        for name in Units.FIELDS:
            a = np.asarray(arrays[name])
            missing = (a == -1) if name in _INT_FIELDS else np.isnan(a)
            out[name] = None if name not in ("user", "label") and missing.all() else a
        return Units(**out)


@dataclasses.dataclass(frozen=True, eq=False)
class ProbeContext:
    """What every contender of one evaluation is probed on.

    Attributes:
        population: the evaluated users (`protocol.Population`).
        labels: task -> the population's labels (``[N]`` arrays, or `Pairs`).
        history: ``[N, L]`` padded history item ids.
        num_items: item vocabulary size incl. the reserved ids.
        item_counts: ``[V]`` history counts of the users the encoders were
            trained on (label-free): the popularity prior and floor.
        folds: the protocol's folds.
        settings, protocol: the probe settings and the protocol.
    """

    population: Population
    labels: Mapping[str, Any]
    history: np.ndarray
    num_items: int
    item_counts: np.ndarray
    folds: Sequence[Fold]
    settings: EvalSettings
    protocol: Protocol

    @property
    def log_popularity(self) -> np.ndarray:
        return np.log(np.asarray(self.item_counts, dtype=np.float64) + 0.5)

    def exclude(self) -> np.ndarray | None:
        return self.history if self.settings.exclude_history else None


def _selection_seed(seed: int, fold: Fold) -> list[int]:
    return [int(seed), fold.index, _SELECTION_STREAM]


def _fit_info(fold: Fold, labelled: np.ndarray, selection) -> dict:
    return {
        "fold": fold.index,
        "n_labelled": int(labelled.size),
        "candidate": candidate_name(selection.c),
        "prior_selected": bool(selection.prior_selected),
        "inner_folds": int(selection.folds),
        "selection_rows": int(selection.rows),
    }


class Task:
    """A downstream task. Subclasses say how labels are derived, probed and scored."""

    name: str
    reads: tuple[str, ...] = ()  # example features besides the future items it needs
    prior_name = "majority"  # what the `prior` contender is called on this task
    # The `EvalSettings` fields its units depend on (the result cache's key).
    settings_read: tuple[str, ...] = ("c_grid", "probe_se_rule")

    def unavailable(self, meta: Mapping[str, Any]) -> str | None:
        """Why the data (its metadata) cannot support the task, or None."""
        return None

    def derive(self, kept: Mapping[str, np.ndarray], *, liked_threshold: float) -> Any:
        """One split's labels from the features `eval_data.load_eval_data` kept."""
        raise NotImplementedError

    def metric_names(self, k: int) -> tuple[str, ...]:
        raise NotImplementedError

    def score_fold(
        self, ctx: ProbeContext, contender: Contender, fold: Fold, fraction: float, seed: int
    ) -> tuple[Units, dict]:
        """Selects and fits the probe on the fold's labelled users; scores its users."""
        raise NotImplementedError

    def metric_values(self, units: Units, k: int) -> dict[str, float]:
        """Every metric of the task from per-unit scores."""
        raise NotImplementedError


class ClassificationTask(Task):
    """``[n]`` class ids per split, -1 = unknown (skipped); stratified sampling;
    accuracy and balanced accuracy. Labels ``attr_<name>`` are the user attribute."""

    def __init__(self, name: str):
        self.name = name
        self.reads = (name,) if name.startswith(F.ATTRIBUTE_PREFIX) else ()

    def derive(self, kept, *, liked_threshold):
        return kept[self.name].astype(np.int64).reshape(-1)

    def metric_names(self, k):
        return ("accuracy", "balanced_accuracy")

    def score_fold(self, ctx, contender, fold, fraction, seed):
        y = np.asarray(ctx.labels[self.name], dtype=np.int64)
        labelled = sample_fold_labels(y, fold, fraction, seed)
        scored = fold.scored[y[fold.scored] >= 0]
        x = contender.softmax_users
        family = SoftmaxFamily(x, np.maximum(y, 0), int(y.max(initial=0)) + 1)
        s = ctx.settings
        fit, selection = select_and_fit(
            family,
            labelled,
            [PRIOR] + (list(s.c_grid) if x.shape[1] else []),
            folds=ctx.protocol.inner_folds,
            se_rule=s.probe_se_rule,
            seed=_selection_seed(seed, fold),
            strata=y[labelled],
        )
        pred = fit.predict(x[scored])
        info = _fit_info(fold, labelled, selection)
        # A probe whose every prediction is the labelled users' majority class acts as
        # the prior predictor, whichever candidate won (a strong penalty can leave W ~ 0).
        majority = family.fit(labelled, PRIOR, fit.classes).predict(x[scored[:1]])
        info["prior_selected"] = bool(selection.prior_selected or np.all(pred == majority[0]))
        return Units(user=scored, label=y[scored], pred=pred), info

    def metric_values(self, units, k):
        return {
            "accuracy": metrics.accuracy(units.label, units.pred),
            "balanced_accuracy": metrics.balanced_accuracy(units.label, units.pred),
        }


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


def _next_item_rows(ctx: ProbeContext, name: str, fold: Fold, fraction: float, seed: int):
    """(labelled rows with an in-vocabulary target that is not in the excluded history,
    scored rows with any future item).

    A user whose next item is already in their history (a repeat purchase) cannot be
    ranked it when the history is excluded: scored, it is a miss; labelled, it would
    ask the probe for an item it is never allowed to predict, so it is not trained on.
    """
    t = np.asarray(ctx.labels[name], dtype=np.int64)
    trainable = (t >= F.NUM_RESERVED) & (t < ctx.num_items)
    exclude = ctx.exclude()
    if exclude is not None:
        trainable &= ~(np.asarray(exclude) == t[:, None]).any(axis=1)
    labelled = sample_fold_labels(np.where(trainable, t, -1), fold, fraction, seed, stratify=False)
    scored = fold.scored[t[fold.scored] != F.PAD_ID]  # OOV targets count as misses
    return t, labelled, scored


class NextItemTask(Task):
    """The first future item ranked over the full catalog (HR@k, NDCG@k), history
    items excluded, by the bilinear probe over the contender's own item vectors
    (`contenders.Contender.next_item_family`). Users without a future item are
    skipped; OOV targets are never trained on and count as misses."""

    name = NEXT_ITEM
    prior_name = "popularity"
    settings_read = (
        "next_item_c_grid", "next_item_negatives", "next_item_selection_rows", "probe_se_rule",
        "exclude_history",
    )  # fmt: skip

    def derive(self, kept, *, liked_threshold):
        return first_future_item(kept[F.FUTURE_ITEM_IDS].astype(np.int64))

    def metric_names(self, k):
        return (f"hr@{k}", f"ndcg@{k}")

    def score_fold(self, ctx, contender, fold, fraction, seed):
        t, labelled, scored = _next_item_rows(ctx, self.name, fold, fraction, seed)
        # The fits' items: one seeded sample per (seed, fold), the same for every contender.
        seeds = [int(seed), fold.index, _SAMPLE_STREAM]
        sample = item_sample(ctx.log_popularity, ctx.settings.next_item_negatives, seeds)
        family = contender.next_item_family(t, ctx.log_popularity, ctx.exclude(), sample)
        theta, selection = select_and_fit(
            family,
            labelled,
            family.candidates(ctx.settings.next_item_c_grid),
            folds=ctx.protocol.inner_folds,
            se_rule=ctx.settings.probe_se_rule,
            seed=_selection_seed(seed, fold),
            selection_rows=ctx.settings.next_item_selection_rows,
        )
        exclude = ctx.exclude()
        ranks = metrics.target_ranks(
            family.score_fn(theta, scored),
            t[scored],
            exclude=None if exclude is None else exclude[scored],
        )
        return Units(user=scored, label=t[scored], rank=ranks), _fit_info(fold, labelled, selection)

    def metric_values(self, units, k):
        return {
            f"hr@{k}": float(metrics.hits_at_k(units.rank, k).mean()),
            f"ndcg@{k}": float(metrics.ndcg_gains_at_k(units.rank, k).mean()),
        }


class NextItemSoftmaxTask(NextItemTask):
    """Next item by the full softmax probe (`probe.train_softmax_probe`: one weight
    column per item), the second variant: trained on two thirds of the labelled
    users, its L2 strength and stopping epoch chosen on the other third (NDCG@k);
    it starts from the popularity prior. Opt-in (``--tasks``): it learns from few
    labels only what the prior gives."""

    name = NEXT_ITEM_SOFTMAX
    settings_read = (
        "l2_grid", "probe_max_epochs", "probe_patience", "probe_min_epochs", "probe_se_rule",
        "exclude_history", "k",
    )  # fmt: skip

    def score_fold(self, ctx, contender, fold, fraction, seed):
        t, labelled, scored = _next_item_rows(ctx, self.name, fold, fraction, seed)
        s, exclude = ctx.settings, ctx.exclude()
        inner = inner_folds(labelled.size, 3, _selection_seed(seed, fold))
        tr, sel = labelled[inner != 0], labelled[inner == 0]
        info = {"fold": fold.index, "n_labelled": int(labelled.size), "inner_folds": 1}
        if not (tr.size and sel.size) or contender.users.shape[1] == 0:
            probe = None
        else:
            # lazy: the TensorFlow probe only here (the other probes run in workers
            # that never import TensorFlow)
            from bt_tf.evaluation.probe import train_softmax_probe

            probe = train_softmax_probe(
                contender.users[tr], t[tr], contender.users[sel], t[sel], ctx.num_items,
                **s.probe_kwargs(), seed=int(seed), prior_counts=ctx.item_counts,
                select_metric=_ndcg_rows(t[sel], None if exclude is None else exclude[sel], s.k),
            )  # fmt: skip
        if probe is None:
            scores = lambda a, b: np.broadcast_to(ctx.log_popularity, (b - a, ctx.num_items))  # noqa: E731
            info.update(candidate="prior", prior_selected=True)
        else:
            scores = probe.score_fn(contender.users[scored])
            info.update(candidate=f"l2={probe.l2:g}", prior_selected=probe.best_epoch == 0)
        ranks = metrics.target_ranks(
            scores, t[scored], exclude=None if exclude is None else exclude[scored]
        )
        return Units(user=scored, label=t[scored], rank=ranks), info


def _ndcg_rows(y: np.ndarray, exclude: np.ndarray | None, k: int):
    def per_row(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
        ex = None if exclude is None else exclude[rows]
        return metrics.ndcg_gains_at_k(metrics.target_ranks(scores, y[rows], exclude=ex), k)

    return per_row


class LikedItemTask(Task):
    """For each future (user, item): liked? Users are sampled, then all their
    pairs used (a user's pairs share an inner fold); accuracy and AUC."""

    name = LIKED_ITEM
    settings_read = ("c_grid", "probe_se_rule", "liked_threshold")

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

    def metric_names(self, k):
        return ("accuracy", "auc")

    def score_fold(self, ctx, contender, fold, fraction, seed):
        pairs: Pairs = ctx.labels[self.name]
        has = users_with_pairs(pairs, ctx.population.size)
        users = sample_fold_labels(has, fold, fraction, seed, stratify=False)
        labelled = np.flatnonzero(np.isin(pairs.user_index, users))
        scored = np.flatnonzero(np.isin(pairs.user_index, fold.scored))
        x = contender.pair_features(pairs, ctx.num_items)
        family = SoftmaxFamily(x, pairs.labels, 2)
        fit, selection = select_and_fit(
            family,
            labelled,
            [PRIOR] + (list(ctx.settings.c_grid) if x.shape[1] else []),
            folds=ctx.protocol.inner_folds,
            se_rule=ctx.settings.probe_se_rule,
            seed=_selection_seed(seed, fold),
            groups=pairs.user_index[labelled],
        )
        z = fit.logits(x[scored])
        if fit.classes.size == 2:
            logit = z[:, 1] - z[:, 0]
        else:  # one class among the labelled pairs: a constant
            logit = np.full(scored.size, 1.0 if fit.classes[0] == 1 else -1.0)
        units = Units(
            user=pairs.user_index[scored],
            item=pairs.item_ids[scored],
            label=pairs.labels[scored],
            score=logit,
        )
        info = _fit_info(fold, labelled, selection)
        info["n_labelled_users"] = int(users.size)
        return units, info

    def metric_values(self, units, k):
        return {
            "accuracy": metrics.accuracy(units.label, (units.score > 0).astype(np.int64)),
            "auc": fold_auc(units),
        }


def fold_auc(units: Units) -> float:
    """The mean over folds of the AUC of each fold's pairs: every fold's probe scores
    on its own scale (a prior predictor is a constant per fold), so scores of two folds
    are never ranked against each other. NaN without a fold holding both classes."""
    fold = units.column("fold")
    values = [metrics.roc_auc(units.label[fold == f], units.score[fold == f])
              for f in np.unique(fold)]  # fmt: skip
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


TASKS: dict[str, Task] = {
    t.name: t for t in (NextItemTask(), NextItemSoftmaxTask(), FavoriteGenreTask(), LikedItemTask())
}


def get_task(name: str) -> Task:
    """The registered task ``name``, else a `ClassificationTask` on labels of that name."""
    return TASKS.get(name) or ClassificationTask(name)


def probe_contender(
    ctx: ProbeContext, contender: Contender, task: str, fraction: float, seed: int
) -> tuple[Units, list[dict]]:
    """One task for one contender at one (fraction, seed): every fold's probe.

    Returns the scored units of all folds (each user once) and one fit record
    per fold (`_fit_info`: labelled users, chosen candidate, whether the prior
    predictor was chosen).
    """
    t = get_task(task)
    parts, fits = [], []
    for fold in ctx.folds:
        units, info = t.score_fold(ctx, contender, fold, fraction, seed)
        units = dataclasses.replace(units, fold=np.full(len(units), fold.index, np.int64))
        parts.append(units)
        fits.append(dict(info, n_scored=len(units)))
    return Units.concat(parts), fits

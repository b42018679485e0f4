"""The runs with an item side as recommenders, in the protocol sequential recommenders use.

The probes of `bt_tf.evaluation.probing` ask what a frozen user embedding
knows; this module asks how well a DE (or BT+DE) run recommends WITH ITS OWN
TOWERS, the way sequential recommenders are compared ("Self-Attentive
Sequential Recommendation", Kang & McAuley, ICDM 2018; RecBole):

* ``leave_one_out`` (runs trained with ``--protocol=leave_one_out``, the
  field's protocol): every user trained on all but its last two items; item
  n-1 validated (epoch selection, `bt_tf.training.validation`); item n, the
  test item, is ranked after the history and item n-1 (the most recent
  ``max_len``) (`leave_one_out_cases`).
* ``leave_last_out`` (runs on a history/future artifact): each user's last
  stored item is held out after the rest (`sasrec_inputs`,
  `leave_last_out_cases`); the encoder trained on the train split's histories.

Both are ranked two ways, with the same per-user scores (the run's query encoder
on the input, dot its item table, `restore_run`):

* **full** (primary): against every real item but the user's own earlier
  items (a target the user had before stays rankable); reserved ids never.
* **sampled** (secondary, as SASRec reported): against 100 negatives drawn
  uniformly without replacement from the catalog ids the user never rated
  in the stored data (`sample_negatives`). Sampled metrics can order models
  differently from full ones (Krichene & Rendle, KDD 2020), so they are
  labelled as sampled and never the headline.

Ties count against the target (``rank = 1 + #{others scoring >= target}``,
as in `bt_tf.evaluation.metrics`); HR@10 = 1[rank <= 10], NDCG@10 =
1[rank <= 10] / log2(rank + 1). Users whose target is outside the vocabulary
(OOV), whose input is empty, or (leave-one-out) who have fewer than 3 items
are skipped and counted. Per run, 95% intervals come from
`scipy.stats.bootstrap` over users (percentile, 2000 resamples, seeded).
Negatives depend only on the artifact, the seed and the user order, so runs
on one artifact are scored against the same negatives; a popularity ranking
of the same users comes with them. `evaluate_recommender` writes
``recommender.json`` and ``recommender.md``; `bt_tf.train` writes a
leave-one-out run's own ``recommender.json`` into its run directory.
Published and measured SASRec figures (`SASREC_REFERENCES`) are reported
beside them for orientation.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from scipy import stats

from bt_tf import atomic, runs
from bt_tf import features as F
from bt_tf.data import dataset
from bt_tf.data.embeddings import embed_items, embed_split
from bt_tf.errors import UserError
from bt_tf.evaluation.embedding_cache import restore_run
from bt_tf.evaluation.labels import item_counts
from bt_tf.evaluation.metrics import hits_at_k, ndcg_gains_at_k
from bt_tf.evaluation.report import value_cell
from bt_tf.evaluation.runner import run_names
from bt_tf.training import validation

__all__ = [
    "NUM_NEGATIVES",
    "K",
    "SASREC_REFERENCES",
    "JSON_FILE",
    "MARKDOWN_FILE",
    "protocol_text",
    "sasrec_inputs",
    "sample_negatives",
    "sampled_ranks",
    "bootstrap_interval",
    "interval_block",
    "read_sequences",
    "Cases",
    "leave_one_out_cases",
    "leave_last_out_cases",
    "score_cases",
    "score_run",
    "score_popularity",
    "evaluate_recommender",
    "write_markdown",
]

NUM_NEGATIVES = 100
K = 10
# Published and measured SASRec figures, for orientation beside ours.
SASREC_REFERENCES = (
    {
        "name": "SASRec (published, ML-1M)",
        "protocol": "leave_one_out",
        "sampled": {"hr@10": 0.8245, "ndcg@10": 0.5905},
        "source": "Kang & McAuley 2018, Self-Attentive Sequential Recommendation, Table III "
        "(MovieLens-1M, 100 sampled negatives; another dataset than ML-100K)",
    },
    {
        "name": "SASRec, public PyTorch port (ML-100K)",
        "protocol": "leave_one_out",
        "full": {"hr@10": 0.194, "ndcg@10": 0.100},
        "sampled": {"hr@10": 0.743, "ndcg@10": 0.462},
        "source": "a widely used PyTorch SASRec (binary cross-entropy, one sampled negative per "
        "position, 2 blocks, d=50, max_len 200, dropout 0.2, Adam 1e-3, batch 128) on the "
        "ML-100K ratings of shared/tools/ml100k_offline.py, ties in file order, no k-core, "
        "epoch 200 (issue 22)",
    },
)
JSON_FILE = "recommender.json"
MARKDOWN_FILE = "recommender.md"


def protocol_text(protocol: str, num_negatives: int = NUM_NEGATIVES, k: int = K) -> str:
    """A protocol in one paragraph, as the report states it."""
    if protocol == "leave_one_out":
        return (
            "leave_one_out (SASRec, RecBole): every user trained on all but its last two "
            "items; item n-1 validated (epoch selection); item n is the test item, ranked "
            "after the history and item n-1 (the most recent max_len) by the run's own query "
            "encoder dot its item table, against every real item but the user's earlier "
            f"ones (full) and against {num_negatives} items the user never rated (sampled); "
            f"ties count against the target; HR@{k} and NDCG@{k} over every user."
        )
    return (
        "leave_last_out on a history/future artifact: each user's last stored item "
        "(history + future) is held out and ranked by the run's own query encoder (input: "
        "the items before it, the most recent max_len) dot its item tower against every "
        "real item but the user's earlier stored ones (full) and against "
        f"{num_negatives} items drawn uniformly without replacement from those the user "
        "never rated in the stored data (sampled); the history is truncated to the "
        f"artifact's max_len; ties count against the target; HR@{k} and NDCG@{k} over "
        "every user of every split (the encoder trained on train users' histories)."
    )


def _real(row: np.ndarray) -> np.ndarray:
    return row[row != F.PAD_ID]


def sasrec_inputs(
    history: np.ndarray, future: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Leave-last-out inputs, targets and rated sets of right-padded sequences.

    Args:
        history: int ``[n, H]`` history item ids, oldest first, right-padded with 0.
        future: int ``[n, T]`` future item ids, oldest first, right-padded with 0.
        max_len: input width (the encoder's ``max_len``).

    Returns:
        inputs: int64 ``[n, max_len]``, the most recent ``max_len`` items of
            ``history + future[:-1]``, right-padded with 0;
        targets: int64 ``[n]``, the last item of ``history + future`` (0 for
            an empty sequence, which then counts as a reserved id);
        rated: per user, the sorted distinct ids of ``history + future``
            (reserved ids included where stored, padding not).
    """
    history, future = np.asarray(history), np.asarray(future)
    if history.ndim != 2 or future.ndim != 2 or len(history) != len(future):
        raise ValueError(
            f"history {history.shape} and future {future.shape} must be [n, L] with the same n"
        )
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}.")
    n = len(history)
    inputs = np.zeros((n, max_len), np.int64)
    targets = np.zeros(n, np.int64)
    rated = []
    for u in range(n):
        sequence = np.concatenate([_real(history[u]), _real(future[u])]).astype(np.int64)
        rated.append(np.unique(sequence))
        if sequence.size:
            targets[u] = sequence[-1]
            before = sequence[:-1][-max_len:]
            inputs[u, : before.size] = before
    return inputs, targets, rated


def sample_negatives(
    rated: Sequence[np.ndarray],
    num_items: int,
    *,
    num_negatives: int = NUM_NEGATIVES,
    seed: int = 0,
) -> np.ndarray:
    """Per user, ``num_negatives`` distinct catalog ids the user never rated, drawn uniformly.

    Candidates are the ids ``NUM_RESERVED .. num_items - 1`` not in the
    user's ``rated`` ids. A user with fewer unrated items than
    ``num_negatives`` gets ALL of them (the row is then padded with -1): the
    ranking is over every item left, never over repeats. One
    ``np.random.default_rng(seed)`` stream draws the users in order, so the
    same seed and users give the same negatives. Draws are uniform with
    rejection (a rated or repeated id is drawn again), which is a uniform sample
    without replacement of the unrated ids and costs ``O(num_negatives)`` per user
    whatever the catalog's size (a mask over the catalog per user was 5e9 writes
    at 100k users x 50k items).

    Returns:
        int64 ``[n, num_negatives]``, -1 where a user has no more unrated items.
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}.")
    rng = np.random.default_rng(seed)
    out = np.full((len(rated), num_negatives), -1, np.int64)
    catalog = num_items - F.NUM_RESERVED
    for u, ids in enumerate(rated):
        ids = np.unique(np.asarray(ids, np.int64))
        ids = ids[(ids >= F.NUM_RESERVED) & (ids < num_items)]
        unrated = catalog - ids.size
        if unrated <= 2 * num_negatives:  # few left: draw from them exactly
            candidates = np.setdiff1d(np.arange(F.NUM_RESERVED, num_items), ids)
            take = min(num_negatives, candidates.size)
            out[u, :take] = rng.choice(candidates, size=take, replace=False)
            continue
        drawn = np.zeros(0, np.int64)
        while drawn.size < num_negatives:
            more = rng.integers(F.NUM_RESERVED, num_items, size=2 * num_negatives)
            more = more[~np.isin(more, ids, assume_unique=False)]
            drawn = np.concatenate([drawn, more])
            _, first = np.unique(drawn, return_index=True)
            drawn = drawn[np.sort(first)]  # distinct, in the order drawn
        out[u] = drawn[:num_negatives]
    return out


def sampled_ranks(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    targets: np.ndarray,
    negatives: np.ndarray,
    *,
    chunk_size: int = 1024,
) -> np.ndarray:
    """1-based rank of each target among itself and its negatives (ties count against it).

    Args:
        user_emb: float ``[n, d]`` user embeddings.
        item_emb: float ``[num_items, d]``; row i scores item id i by dot product.
        targets: int ``[n]`` held-out item ids (valid rows of ``item_emb``).
        negatives: int ``[n, m]`` negative ids, -1 = no negative (`sample_negatives`).
        chunk_size: users scored at once (``chunk_size * (m + 1) * d`` float64).

    Returns:
        float64 ``[n]``: ``1 + #{negative scores >= target score}``.
    """
    user_emb = np.asarray(user_emb, np.float64)
    item_emb = np.asarray(item_emb, np.float64)
    targets = np.asarray(targets, np.int64).reshape(-1)
    negatives = np.asarray(negatives, np.int64)
    n = len(targets)
    if user_emb.shape[0] != n or negatives.ndim != 2 or negatives.shape[0] != n:
        raise ValueError(
            f"user_emb {user_emb.shape}, targets {targets.shape} and negatives "
            f"{negatives.shape} must have one row per user"
        )
    if n and not ((targets >= 0) & (targets < len(item_emb))).all():
        raise ValueError("every target must be a row of item_emb (skip reserved/OOV targets first)")
    ranks = np.empty(n)
    for start in range(0, n, chunk_size):
        rows = slice(start, min(n, start + chunk_size))
        candidates = np.concatenate([targets[rows, None], negatives[rows]], axis=1)
        present = candidates >= 0
        # One gather and one product for target and negatives: equal embeddings
        # give bit-equal scores, so ties are ties.
        scores = np.einsum("nd,nkd->nk", user_emb[rows], item_emb[np.where(present, candidates, 0)])
        if np.isnan(scores).any():
            raise ValueError(f"scores of users {rows.start}:{rows.stop} contain NaN")
        above = (scores[:, 1:] >= scores[:, :1]) & present[:, 1:]
        ranks[rows] = 1.0 + above.sum(axis=1)
    return ranks


def bootstrap_interval(
    values: np.ndarray, *, seed: int = 0, n_resamples: int = 2000, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-user ``values`` (NaN with < 2 users)."""
    values = np.asarray(values, np.float64)
    if values.size < 2:
        return float("nan"), float("nan")
    if np.all(values == values[0]):  # every resample has the same mean
        return float(values[0]), float(values[0])
    result = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        random_state=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _no_encoder(items, training=False):
    """An "encoder" with 0-wide output: lets `embed_split` read features only."""
    return tf.zeros([tf.shape(items)[0], 0])


def read_sequences(artifact_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (history ``[n, max_len]``, future ``[n, future_len]``) as the artifact
    stores them (history at the artifact's own ``max_len``), users in file order."""
    width = int(dataset.load_metadata(artifact_dir)["max_len"])
    out = {}
    for split in F.SPLITS:
        _, kept = embed_split(
            _no_encoder, artifact_dir, split, max_len=width, keep=[F.ITEMS, F.FUTURE_ITEM_IDS]
        )
        out[split] = (kept[F.ITEMS].astype(np.int64), kept[F.FUTURE_ITEM_IDS].astype(np.int64))
    return out


def interval_block(ranks: np.ndarray, k: int, seed: int, n_resamples: int) -> dict:
    """``{"hr@k", "ndcg@k", "ci95": {"hr@k": [lo, hi], "ndcg@k": [lo, hi]}}`` of per-user
    ranks: means over users and their percentile bootstrap intervals."""
    out: dict = {"ci95": {}}
    for name, gains in ((f"hr@{k}", hits_at_k(ranks, k)), (f"ndcg@{k}", ndcg_gains_at_k(ranks, k))):
        out[name] = float(gains.mean()) if gains.size else float("nan")
        out["ci95"][name] = list(bootstrap_interval(gains, seed=seed, n_resamples=n_resamples))
    return out


def _by_split(split_of: np.ndarray, ranks: np.ndarray, k: int) -> dict:
    """split -> n_users and mean HR@k / NDCG@k (full ranking) of its scored users."""
    out = {}
    for split in dict.fromkeys(split_of.tolist()):
        mine = split_of == split
        out[split] = {
            "n_users": int(mine.sum()),
            f"hr@{k}": float(hits_at_k(ranks[mine], k).mean()),
            f"ndcg@{k}": float(ndcg_gains_at_k(ranks[mine], k).mean()),
        }
    return out


class Cases(NamedTuple):
    """The scored users of one protocol: what each is ranked on."""

    protocol: str  # "leave_one_out" or "leave_last_out"
    inputs: np.ndarray  # int64 [m, max_len] the encoder's input
    targets: np.ndarray  # int64 [m] the held-out item
    seen: object  # scipy CSR [m, num_items]: earlier items, excluded from the full ranking
    rated: list  # per user, every stored item: never a sampled negative
    split_of: np.ndarray  # [m] the user's split
    skipped: dict  # users not scored, by reason


def leave_one_out_cases(
    sequences: dataset.Sequences, max_len: int, num_items: int, stage: str = "test"
) -> Cases:
    """A stage of a leave-one-out artifact (`bt_tf.training.validation`): ``"test"``, item n
    ranked after the history and item n-1; ``"val"``, item n-1 after the history (what
    training's epoch selection ranks; `tuning.compare` chooses recipes on it). Either way
    no sampled negative is one of the user's items (item n included: it only leaves the
    pool, nothing is scored on it)."""
    cases = validation.leave_one_out_cases(sequences, stage, max_len, num_items)
    users = cases["users"]
    ends = np.cumsum(sequences.row_lengths)
    rated = [
        np.concatenate([sequences.values[e - n : e], sequences.future[u]])
        for u, e, n in zip(users, ends[users], sequences.row_lengths[users])
    ]
    split_of = np.full(users.size, "train")
    return Cases("leave_one_out", cases["inputs"], cases["targets"], cases["seen"], rated,
                 split_of, cases["skipped"])  # fmt: skip


def leave_last_out_cases(sequences: Mapping[str, tuple], max_len: int, num_items: int) -> Cases:
    """A history/future artifact's users (`read_sequences`), each one's last stored item
    held out after the rest (`sasrec_inputs`)."""
    from scipy import sparse

    inputs, targets, rated, split_of = [], [], [], []
    for split in sequences:
        x, t, r = sasrec_inputs(*sequences[split], max_len)
        inputs.append(x)
        targets.append(t)
        rated += r
        split_of += [split] * len(t)
    inputs, targets, split_of = np.concatenate(inputs), np.concatenate(targets), np.array(split_of)
    oov = (targets < F.NUM_RESERVED) | (targets >= num_items)
    empty = ~oov & ~(inputs != F.PAD_ID).any(axis=1)
    keep = np.flatnonzero(~(oov | empty))
    # Earlier items: every stored item but the target (a repeat of it stays rankable).
    rows = [np.setdiff1d(rated[u], [targets[u]]) for u in keep]
    seen = sparse.csr_matrix(
        (np.ones(sum(r.size for r in rows), bool),
         (np.repeat(np.arange(keep.size), [r.size for r in rows]),
          np.concatenate(rows + [np.zeros(0, np.int64)]).clip(0, num_items - 1))),
        shape=(keep.size, num_items),
    )  # fmt: skip
    skipped = {"reserved_or_oov_target": int(oov.sum()), "empty_input": int(empty.sum())}
    return Cases("leave_last_out", inputs[keep], targets[keep], seen, [rated[u] for u in keep],
                 split_of[keep], skipped)  # fmt: skip


def score_cases(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    cases: Cases,
    *,
    seed: int = 0,
    num_negatives: int = NUM_NEGATIVES,
    k: int = K,
    n_resamples: int = 2000,
    keep_ranks: bool = False,
) -> dict:
    """Full-ranking (primary) and sampled (secondary) figures of ``cases``' users.

    Returns ``{"protocol", "n_users", "n_skipped", "skipped", "full": `interval_block`,
    "sampled": `interval_block` + "num_negatives", "min_negatives"}, "by_split"}``, and
    with ``keep_ranks`` the per-user ranks too (``"ranks": {"full", "sampled"}``, arrays).
    The sampled negatives depend only on the users' items and ``seed``.
    """
    num_items = len(item_emb)
    full = validation.full_ranking(user_emb, item_emb, cases.targets, cases.seen)
    negatives = sample_negatives(cases.rated, num_items, num_negatives=num_negatives, seed=seed)
    sampled = sampled_ranks(user_emb, item_emb, cases.targets, negatives)
    return {
        "protocol": cases.protocol,
        "n_users": int(cases.targets.size),
        "n_skipped": int(sum(cases.skipped.values())),
        "skipped": dict(cases.skipped),
        "full": interval_block(full, k, seed, n_resamples),
        "sampled": {
            **interval_block(sampled, k, seed, n_resamples),
            "num_negatives": num_negatives,
            "min_negatives": int((negatives >= 0).sum(axis=1).min()) if len(negatives) else 0,
        },
        "by_split": _by_split(cases.split_of, full, k),
        **({"ranks": {"full": full, "sampled": sampled, "cases": cases}} if keep_ranks else {}),
    }


STAGES = ("test", "val")


def run_cases(config: Mapping, sequences: Mapping, num_items: int, stage: str = "test") -> Cases:
    """The cases a run is scored on: its protocol's, from ``sequences[artifact]``;
    ``stage="val"`` (leave-one-out only) the validation item's."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    max_len = int(config["encoder"]["max_len"])
    artifact = os.path.normpath(config["artifact_dir"])
    if config.get("protocol") == "leave_one_out":
        return leave_one_out_cases(sequences[artifact, "loo"], max_len, num_items, stage)
    if stage != "test":
        raise UserError(
            f"{config.get('run_dir', 'the run')}: only a leave-one-out run has a validation "
            "item to score (train it with --protocol=leave_one_out)"
        )
    return leave_last_out_cases(sequences[artifact, "llo"], max_len, num_items)


def popularity_counts(config: Mapping, sequences: Mapping, num_items: int) -> np.ndarray:
    """``[num_items]`` occurrences of each id in the histories the run's protocol trains
    on (every user's, as stored): the popularity ranking's scores."""
    artifact = os.path.normpath(config["artifact_dir"])
    if config.get("protocol") == "leave_one_out":
        histories = sequences[artifact, "loo"].values
    else:
        histories = np.concatenate([h for h, _ in sequences[artifact, "llo"].values()])
    return item_counts(histories, num_items)


def _load_sequences(config: Mapping, cache: dict) -> None:
    """Reads the run's artifact into ``cache`` once (keyed by artifact and protocol)."""
    artifact = os.path.normpath(config["artifact_dir"])
    if config.get("protocol") == "leave_one_out":
        if (artifact, "loo") not in cache:
            cache[artifact, "loo"] = dataset.read_sequences(artifact, F.SPLITS)
    elif (artifact, "llo") not in cache:
        cache[artifact, "llo"] = read_sequences(artifact)


def score_run(
    run_dir: str,
    sequences: Mapping | None = None,
    *,
    seed: int = 0,
    num_negatives: int = NUM_NEGATIVES,
    k: int = K,
    n_resamples: int = 2000,
    batch_size: int = 512,
    keep_ranks: bool = False,
    stage: str = "test",
) -> dict:
    """One DE (or BT+DE) run's figures in its protocol (`score_cases`), with its training
    (``epochs``, ``best_epoch``, ``train_s``) and ``wall_s`` (training + this scoring).

    ``sequences``: a cache of artifacts already read (`_load_sequences`), filled here.
    ``stage``: ``"test"``, or ``"val"`` for a leave-one-out run's validation item
    (`run_cases`; the result then says ``"stage": "val"``).
    """
    start = time.perf_counter()
    sequences = {} if sequences is None else sequences
    encoder, item_emb, config = restore_run(run_dir)
    _load_sequences(config, sequences)
    cases = run_cases(config, sequences, len(item_emb), stage)
    user_emb = embed_items(encoder, cases.inputs, batch_size=batch_size)
    out = {"run_dir": run_dir, "stage": stage, **score_cases(user_emb, item_emb, cases, seed=seed,
                                             num_negatives=num_negatives, k=k,
                                             n_resamples=n_resamples,
                                             keep_ranks=keep_ranks)}  # fmt: skip
    metrics = runs.read_metrics(run_dir) or {}
    train_s = float(metrics.get("train_seconds") or 0.0)
    return dict(
        out,
        epochs=metrics.get("epochs_completed"),
        best_epoch=metrics.get("best_epoch"),
        train_s=round(train_s, 2),
        wall_s=round(train_s + time.perf_counter() - start, 2),
    )


def score_popularity(cases: Cases, counts: np.ndarray, **kwargs) -> dict:
    """The popularity ranking of the same users, targets and negatives as `score_cases`:
    items scored by their count in the training histories (label-free; ties count
    against the target). A recommender that does not beat it has learned nothing a
    count would not give."""
    ones = np.ones((len(cases.targets), 1), np.float32)
    return {"run_dir": "", **score_cases(ones, np.asarray(counts, np.float32)[:, None], cases,
                                         **kwargs)}  # fmt: skip


def _recommender_runs(run_dirs: Sequence[str]) -> list[tuple[str, str, dict]]:
    """(name, run_dir, config) of the runs with an item tower; "bt" runs are left out, logged."""
    configs = [runs.read_config(d) for d in run_dirs]
    names = run_names(configs, run_dirs)
    kept = []
    for name, run_dir, config in zip(names, run_dirs, configs):
        if "de" in config.get("model", "bt").split("+"):
            kept.append((name, run_dir, config))
        else:
            logging.info("%s (%s): a bt run has no trained item tower; skipped", name, run_dir)
    if not kept:
        raise UserError(
            f"--recommender needs a run with an item tower (--model=de or bt+de); "
            f"{list(run_dirs)} are all bt runs"
        )
    return kept


def evaluate_recommender(
    run_dirs: Sequence[str],
    out_dir: str,
    *,
    seed: int = 0,
    num_negatives: int = NUM_NEGATIVES,
    k: int = K,
    n_resamples: int = 2000,
    batch_size: int = 512,
) -> dict:
    """Scores every DE and BT+DE run of ``run_dirs`` as a recommender (module docstring):
    in leave-one-out for runs trained so, else each user's last stored item.

    Runs may come from different artifact dirs (each is read once). Writes
    ``<out_dir>/recommender.json`` (the returned dict) and ``recommender.md``.

    Returns:
        ``{"seed", "num_negatives", "k", "bootstrap", "reference", "runs": [{"model",
        "model_type", ...`score_run` fields}], "wall_s"}``; one popularity row per
        artifact and protocol comes after the runs.
    """
    start = time.perf_counter()
    chosen = _recommender_runs(run_dirs)
    sequences: dict = {}
    results = []
    kwargs = dict(seed=seed, num_negatives=num_negatives, k=k, n_resamples=n_resamples)
    for name, run_dir, config in chosen:
        row = score_run(run_dir, sequences, batch_size=batch_size, **kwargs)
        results.append({"model": name, "model_type": config.get("model", "bt"), **row})
        logging.info(
            "%s (%s): full HR@%d %.4f NDCG@%d %.4f; sampled HR@%d %.4f; %d users (%d skipped)",
            name, row["protocol"], k, row["full"][f"hr@{k}"], k, row["full"][f"ndcg@{k}"],
            k, row["sampled"][f"hr@{k}"], row["n_users"], row["n_skipped"],
        )  # fmt: skip
    done = set()
    for _, _, config in chosen:  # the popularity ranking, once per artifact and protocol
        key = (os.path.normpath(config["artifact_dir"]), config.get("protocol"))
        if key in done:
            continue
        done.add(key)
        num_items = int(config["encoder"]["vocab_size"])
        cases = run_cases(config, sequences, num_items)
        row = score_popularity(cases, popularity_counts(config, sequences, num_items), **kwargs)
        results.append({"model": "popularity", "model_type": "popularity", **row})
    report = {
        "protocols": {
            p: protocol_text(p, num_negatives, k)
            for p in dict.fromkeys(r["protocol"] for r in results)
        },  # fmt: skip
        "seed": seed,
        "num_negatives": num_negatives,
        "k": k,
        "bootstrap": {"method": "percentile", "n_resamples": n_resamples, "confidence": 0.95},
        "reference": SASREC_REFERENCES,
        "runs": results,
        "wall_s": round(time.perf_counter() - start, 2),
    }
    os.makedirs(out_dir, exist_ok=True)
    atomic.write_json(os.path.join(out_dir, JSON_FILE), report, indent=1)
    write_markdown(report, os.path.join(out_dir, MARKDOWN_FILE))
    return report


def interval_cell(block: Mapping, name: str) -> str:
    """``"0.0945 [0.0802, 0.1092]"``: figure ``name`` of a `interval_block` with its interval."""
    return value_cell(block[name], block["ci95"][name], ".4f")


def write_markdown(report: Mapping, path: str) -> None:
    """``report`` (`evaluate_recommender`'s) as a Markdown table, the references last."""
    k = report["k"]
    lines = ["# The runs as recommenders", ""]
    for text in report["protocols"].values():
        lines += [text, ""]
    lines += [
        f"| model | protocol | users | skipped | full HR@{k} | full NDCG@{k} | "
        f"sampled HR@{k} | sampled NDCG@{k} | epochs (best) | run |",
        "|---" * 10 + "|",
    ]
    for r in report["runs"]:
        epochs = f"{r.get('epochs')} ({r.get('best_epoch')})" if r.get("epochs") else ""
        cells = [interval_cell(r[kind], f"{m}@{k}") for kind in ("full", "sampled")
                 for m in ("hr", "ndcg")]  # fmt: skip
        lines.append(
            f"| {r['model']} | {r['protocol']} | {r['n_users']} | {r['n_skipped']} | "
            f"{' | '.join(cells)} | {epochs} | `{r['run_dir']}` |"
        )
    for ref in report["reference"]:
        full = ref.get("full", {})
        lines.append(
            f"| {ref['name']} | {ref['protocol']} | | | {full.get('hr@10', '')} | "
            f"{full.get('ndcg@10', '')} | {ref['sampled']['hr@10']} | "
            f"{ref['sampled']['ndcg@10']} | | |"
        )
    lines += [""] + [f"- {ref['name']}: {ref['source']}" for ref in report["reference"]]
    lines += [
        "",
        f"Full ranking: the held-out item against every real item but the user's own earlier "
        f"ones (primary). Sampled: against {report['num_negatives']} items the user never "
        f"rated (secondary; sampled metrics can order models differently, Krichene & Rendle "
        f"2020). 95% intervals: percentile bootstrap over users "
        f"({report['bootstrap']['n_resamples']} resamples, seed {report['seed']}).",
        "",
    ]
    atomic.write_text(path, "\n".join(lines))


# --------------------------------------------------------------------------
# Contenders compared in leave-one-out (`bt_tf.reproduce --protocol=leave_one_out`)


def hierarchical_means(
    per_model: Mapping[str, np.ndarray],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    chunk: int = 100,
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of each model's mean per-user figure, users AND seeds resampled.

    ``per_model``: model -> ``[S, n]`` per-user values of its S pretraining seeds on the
    same n users. Each replicate draws n users with replacement (the same users for every
    model: comparisons stay paired) and, independently for each model, S of its seeds
    with replacement, and averages. So the spread between seeds reaches the interval
    (averaging the seeds before resampling users alone would hide it). Hand-written with
    numpy: `scipy.stats.bootstrap` resamples one axis of its samples, not users and each
    model's seeds at two levels.

    Returns model -> ``[n_resamples]`` replicates.
    """
    rng = np.random.default_rng(seed)
    n = next(iter(per_model.values())).shape[1]
    out = {m: np.empty(n_resamples) for m in per_model}
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        users = rng.integers(0, n, size=(size, n))
        weights = np.zeros((size, n))
        np.add.at(weights, (np.repeat(np.arange(size), n), users.ravel()), 1.0 / n)
        for m, values in per_model.items():
            by_seed = weights @ np.asarray(values, np.float64).T  # [size, S]
            seeds = rng.integers(0, by_seed.shape[1], size=by_seed.shape)
            out[m][start : start + size] = np.take_along_axis(by_seed, seeds, 1).mean(axis=1)
    return out


def compare_contenders(
    per_model: Mapping[str, np.ndarray],
    baseline: str,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Each model's mean (over seeds and users) with its interval, and each model's ratio
    to ``baseline`` with its paired interval and the per-seed ratios (`hierarchical_means`).

    Returns ``{"models": {m: {"mean", "ci95", "per_seed", "seeds"}}, "comparisons":
    {m: {"ratio", "ci95", "per_seed_ratios"}}}`` (per-seed ratios pair seed k of the model
    with seed k of the baseline, where both have it).
    """
    reps = hierarchical_means(per_model, n_resamples=n_resamples, seed=seed)
    tail = 100 * (1 - confidence) / 2
    models, comparisons = {}, {}
    for m, values in per_model.items():
        per_seed = np.asarray(values, np.float64).mean(axis=1)
        models[m] = {
            "mean": float(per_seed.mean()),
            "ci95": np.percentile(reps[m], [tail, 100 - tail]).tolist(),
            "per_seed": per_seed.tolist(),
            "seeds": int(per_seed.size),
        }
    base = models.get(baseline)
    for m in per_model:
        if m == baseline or base is None:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = reps[m] / reps[baseline]
            pairs = min(models[m]["seeds"], base["seeds"])
            per_seed = [models[m]["per_seed"][k] / base["per_seed"][k] for k in range(pairs)]
        comparisons[m] = {
            "ratio": models[m]["mean"] / base["mean"] if base["mean"] else float("nan"),
            "ci95": np.nanpercentile(ratio, [tail, 100 - tail]).tolist(),
            "per_seed_ratios": per_seed,
        }
    return {"models": models, "comparisons": comparisons}

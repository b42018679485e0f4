"""The dual encoder as a recommender, scored in the protocol of SASRec (Kang & McAuley 2018).

The probes of `bt_tf.evaluation.probing` ask what a frozen user embedding
knows; this module asks how well a DE run recommends WITH ITS OWN TOWERS, the
way sequential recommenders are usually compared ("Self-Attentive Sequential
Recommendation", Kang & McAuley, ICDM 2018):

* A user's full sequence is the stored history followed by the future
  (`bt_tf.features`). Its LAST item is held out as the target; the input is
  the most recent ``max_len`` items before it (the run's encoder width), i.e.
  the tail of ``history + future[:-1]`` (`sasrec_inputs`).
* 100 negatives per user, drawn uniformly without replacement from the
  catalog ids the user never rated (`sample_negatives`). "Never rated" is
  judged on what the artifact stores: the history truncated to the
  artifact's ``max_len`` plus the future; older ratings are not kept, so a
  negative may be an item the user rated long ago. Reserved ids 0/1/2 are
  never negatives. SASRec's code draws each negative independently
  (duplicates possible); here the 100 are distinct.
* Score = the run's query encoder on the input, dot the item tower's row
  (`restore_run`). The target's rank among the 101 items is
  ``1 + #{negatives scoring higher} + #{negatives scoring equal}`` (ties
  count against the target, as in `bt_tf.evaluation.metrics`);
  HR@10 = 1[rank <= 10], NDCG@10 = 1[rank <= 10] / log2(rank + 1) (`sampled_ranks`).
* Users whose target is a reserved id (an item outside the train
  vocabulary: OOV) or whose input is empty are skipped and counted.

Every user of every split is scored (the DE trains on train users'
histories, never on anyone's future, so every target is unseen). Per run,
95% intervals come from `scipy.stats.bootstrap` over users (percentile,
2000 resamples, seeded). Negatives depend only on the artifact, the seed and
the user order, so runs on one artifact are scored against the same
negatives. `evaluate_recommender` writes ``recommender.json`` and
``recommender.md``. The SASRec paper's ML-1M figures are reported beside
them for orientation only: another dataset (ML-1M, not ML-100K), a longer
input (200) and its own item filtering.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
from scipy import stats

from bt_tf import features as F
from bt_tf import runs
from bt_tf.data import dataset
from bt_tf.data.embeddings import embed_items, embed_split
from bt_tf.errors import UserError
from bt_tf.evaluation.embedding_cache import restore_run
from bt_tf.evaluation.labels import item_counts
from bt_tf.evaluation.metrics import hits_at_k, ndcg_gains_at_k
from bt_tf.evaluation.runner import run_names

__all__ = [
    "NUM_NEGATIVES",
    "K",
    "SASREC_ML1M",
    "JSON_FILE",
    "MARKDOWN_FILE",
    "protocol",
    "sasrec_inputs",
    "sample_negatives",
    "sampled_ranks",
    "bootstrap_interval",
    "read_sequences",
    "score_run",
    "evaluate_recommender",
    "write_markdown",
]

NUM_NEGATIVES = 100
K = 10
# The published SASRec figures on MovieLens-1M (same protocol, another dataset).
SASREC_ML1M = {
    "hr@10": 0.8245,
    "ndcg@10": 0.5905,
    "source": "Kang & McAuley 2018, Self-Attentive Sequential Recommendation (SASRec, "
    "MovieLens-1M)",
}
JSON_FILE = "recommender.json"
MARKDOWN_FILE = "recommender.md"


def protocol(num_negatives: int = NUM_NEGATIVES, k: int = K) -> str:
    """The protocol in one sentence, as the report states it."""
    return (
        f"SASRec protocol: each user's last item (history + future) is held out and ranked "
        f"by the run's own query encoder (input: the items before it, the most recent "
        f"max_len) dot its item tower against {num_negatives} items drawn uniformly without "
        f"replacement from those the user never rated in the stored data (history truncated "
        f"to the artifact's max_len, plus the future); ties count against the target; "
        f"HR@{k} and NDCG@{k} over every user of every split."
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
    same seed and users give the same negatives.

    Returns:
        int64 ``[n, num_negatives]``, -1 where a user has no more unrated items.
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}.")
    rng = np.random.default_rng(seed)
    out = np.full((len(rated), num_negatives), -1, np.int64)
    unrated = np.ones(num_items, bool)
    for u, ids in enumerate(rated):
        unrated[F.NUM_RESERVED :] = True
        unrated[: F.NUM_RESERVED] = False
        ids = np.asarray(ids, np.int64)
        unrated[ids[(ids >= 0) & (ids < num_items)]] = False
        candidates = np.flatnonzero(unrated)
        if candidates.size <= num_negatives:
            out[u, : candidates.size] = rng.permutation(candidates)
        else:
            out[u] = rng.choice(candidates, size=num_negatives, replace=False)
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


def _interval_fields(values: np.ndarray, name: str, seed: int, n_resamples: int) -> dict:
    low, high = bootstrap_interval(values, seed=seed, n_resamples=n_resamples)
    mean = float(values.mean()) if values.size else float("nan")
    return {name: mean, f"{name}_ci95": [low, high]}


def _by_split(split_of: np.ndarray, hits: np.ndarray, gains: np.ndarray, k: int) -> dict:
    """split -> n_users and mean HR@k / NDCG@k of its scored users (no interval)."""
    out = {}
    for split in dict.fromkeys(split_of.tolist()):
        mine = split_of == split
        out[split] = {
            "n_users": int(mine.sum()),
            f"hr@{k}": float(hits[mine].mean()),
            f"ndcg@{k}": float(gains[mine].mean()),
        }
    return out


def score_run(
    run_dir: str,
    sequences: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    seed: int = 0,
    num_negatives: int = NUM_NEGATIVES,
    k: int = K,
    n_resamples: int = 2000,
    batch_size: int = 512,
) -> dict:
    """One DE (or BT+DE) run's SASRec figures on ``sequences`` (`read_sequences` of its artifact).

    Returns:
        ``{"run_dir", "n_users", "n_skipped", "skipped", "hr@k", "hr@k_ci95",
        "ndcg@k", "ndcg@k_ci95", "min_negatives", "by_split", "wall_s"}``;
        ``n_users`` counts the scored users, ``skipped`` the others by reason,
        ``min_negatives`` the fewest negatives a user had; ``by_split`` the
        figures of train, eval and test users apart (the DE trained on train
        users' histories; every target is a future item, unseen in training).
    """
    start = time.perf_counter()
    encoder, item_emb, config = restore_run(run_dir)
    cases = _cases(sequences, int(config["encoder"]["max_len"]), len(item_emb), seed, num_negatives)
    user_emb = embed_items(encoder, cases["inputs"], batch_size=batch_size)
    ranks = sampled_ranks(user_emb, item_emb, cases["targets"], cases["negatives"])
    out = {"run_dir": run_dir, **_figures(ranks, cases, seed, k, n_resamples)}
    return dict(out, wall_s=round(time.perf_counter() - start, 2))


def _cases(sequences, max_len: int, num_items: int, seed: int, num_negatives: int) -> dict:
    """The scored users' inputs, targets and negatives, and the users skipped."""
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
    keep = ~(oov | empty)
    negatives = sample_negatives(
        [r for r, kept in zip(rated, keep) if kept],
        num_items,
        num_negatives=num_negatives,
        seed=seed,
    )
    return {
        "inputs": inputs[keep],
        "targets": targets[keep],
        "negatives": negatives,
        "split_of": split_of[keep],
        "skipped": {"reserved_or_oov_target": int(oov.sum()), "empty_input": int(empty.sum())},
    }


def _figures(ranks: np.ndarray, cases: dict, seed: int, k: int, n_resamples: int) -> dict:
    hits, gains = hits_at_k(ranks, k), ndcg_gains_at_k(ranks, k)
    negatives = cases["negatives"]
    return {
        "n_users": int(ranks.size),
        "n_skipped": int(sum(cases["skipped"].values())),
        "skipped": cases["skipped"],
        **_interval_fields(hits, f"hr@{k}", seed, n_resamples),
        **_interval_fields(gains, f"ndcg@{k}", seed, n_resamples),
        "min_negatives": int((negatives >= 0).sum(axis=1).min()) if len(negatives) else 0,
        "by_split": _by_split(cases["split_of"], hits, gains, k),
    }


def score_popularity(
    sequences: Mapping[str, tuple[np.ndarray, np.ndarray]],
    num_items: int,
    max_len: int,
    *,
    seed: int = 0,
    num_negatives: int = NUM_NEGATIVES,
    k: int = K,
    n_resamples: int = 2000,
) -> dict:
    """The popularity ranking in the same protocol (same users, targets and negatives
    as `score_run` with the same seed): items scored by how often they occur in the
    users' histories (label-free; ties count against the target). A recommender that
    does not beat it has learned nothing a count would not give."""
    cases = _cases(sequences, max_len, num_items, seed, num_negatives)
    counts = item_counts(np.concatenate([h for h, _ in sequences.values()]), num_items)
    ranks = sampled_ranks(np.ones((len(cases["targets"]), 1)), counts[:, None],
                          cases["targets"], cases["negatives"])  # fmt: skip
    return {"run_dir": "", **_figures(ranks, cases, seed, k, n_resamples)}


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
    """Scores every DE and BT+DE run of ``run_dirs`` in the SASRec protocol (module docstring).

    Runs may come from different artifact dirs (each is read once). Writes
    ``<out_dir>/recommender.json`` (the returned dict) and ``recommender.md``.

    Returns:
        ``{"protocol", "seed", "num_negatives", "k", "bootstrap", "reference",
        "runs": [{"model", "model_type", ...`score_run` fields}], "wall_s"}``
        (``wall_s``: the whole evaluation, reading the data included).
    """
    start = time.perf_counter()
    chosen = _recommender_runs(run_dirs)
    sequences: dict[str, dict] = {}
    results = []
    for name, run_dir, config in chosen:
        artifact = os.path.normpath(config["artifact_dir"])
        if artifact not in sequences:
            sequences[artifact] = read_sequences(artifact)
        row = score_run(
            run_dir,
            sequences[artifact],
            seed=seed,
            num_negatives=num_negatives,
            k=k,
            n_resamples=n_resamples,
            batch_size=batch_size,
        )
        results.append({"model": name, "model_type": config.get("model", "bt"), **row})
        logging.info(
            "%s: HR@%d %.4f, NDCG@%d %.4f over %d users (%d skipped), %.1f s",
            name, k, row[f"hr@{k}"], k, row[f"ndcg@{k}"], row["n_users"], row["n_skipped"],
            row["wall_s"],
        )  # fmt: skip
    for artifact, seqs in sequences.items():  # the popularity ranking, once per artifact
        config = next(c for _, _, c in chosen if os.path.normpath(c["artifact_dir"]) == artifact)
        encoder = config["encoder"]
        row = score_popularity(
            seqs, int(encoder["vocab_size"]), int(encoder["max_len"]), seed=seed,
            num_negatives=num_negatives, k=k, n_resamples=n_resamples,
        )  # fmt: skip
        results.append({"model": "popularity", "model_type": "popularity", **row})
    report = {
        "protocol": protocol(num_negatives, k),
        "seed": seed,
        "num_negatives": num_negatives,
        "k": k,
        "bootstrap": {"method": "percentile", "n_resamples": n_resamples, "confidence": 0.95},
        "reference": SASREC_ML1M,
        "runs": results,
        "wall_s": round(time.perf_counter() - start, 2),
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, JSON_FILE), "w") as f:
        json.dump(report, f, indent=1)
    write_markdown(report, os.path.join(out_dir, MARKDOWN_FILE))
    return report


def _cell(mean: float, interval: Sequence[float]) -> str:
    return f"{mean:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"


def write_markdown(report: Mapping, path: str) -> None:
    """``report`` (`evaluate_recommender`'s) as a Markdown table, the reference row last."""
    k = report["k"]
    lines = [
        "# The dual encoder as a recommender (SASRec protocol)",
        "",
        report["protocol"],
        "",
        f"| model | n users | skipped | HR@{k} [95% CI] | NDCG@{k} [95% CI] | run |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['model']} | {r['n_users']} | {r['n_skipped']} | "
            f"{_cell(r[f'hr@{k}'], r[f'hr@{k}_ci95'])} | "
            f"{_cell(r[f'ndcg@{k}'], r[f'ndcg@{k}_ci95'])} | `{r['run_dir']}` |"
        )
    ref = report["reference"]
    lines += [
        f"| SASRec (published, ML-1M) | | | {ref['hr@10']:.4f} | {ref['ndcg@10']:.4f} | |",
        "",
        f"Reference: {ref['source']}; another dataset and setup, for orientation only. "
        f"95% intervals: percentile bootstrap over users ({report['bootstrap']['n_resamples']} "
        f"resamples, seed {report['seed']}).",
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))

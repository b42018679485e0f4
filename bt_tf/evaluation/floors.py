"""The floors every learned model is read beside.

``majority`` (majority class of the sampled train labels, `majority_floor`),
``popularity`` (next item: train-history counts, `popularity_floor`),
``bag_of_items`` (the same probes on L2-normalized history item counts,
`bag_of_items_features`; a seeded Gaussian random projection when the catalog
is large) and ``untrained`` (an encoder of the run's architecture, freshly
initialized with its seed, `untrained_floor_rows`). `floor_rows` computes the
label floors and the bag-of-items probe of one evaluation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse
import tensorflow as tf

from bt_tf import features as F
from bt_tf.evaluation import metrics
from bt_tf.evaluation.embedding_cache import (
    cached_embeddings,
    embed_users,
    untrained_encoder,
)
from bt_tf.evaluation.labels import as_ragged, check_splits, item_counts, next_item_masks
from bt_tf.evaluation.probing import EvalPlan, evaluate_features
from bt_tf.evaluation.settings import DEFAULT_FRACTIONS
from bt_tf.evaluation.tasks import NEXT_ITEM, get_task, result_rows

__all__ = [
    "bag_of_items_features",
    "majority_floor",
    "popularity_floor",
    "floor_rows",
    "untrained_floor_rows",
]


def bag_of_items_features(
    history_item_ids: Any,
    vocab_size: int,
    *,
    projection_dim: int | None = None,
    seed: int = 0,
) -> scipy.sparse.csr_matrix | np.ndarray:
    """Bag-of-items user features for the logistic-regression floor.

    Each row is the user's history item counts, L2-normalized (reserved ids
    dropped). Returns a ``scipy.sparse.csr_matrix [n, vocab_size]`` (the probes
    accept sparse input), or with ``projection_dim`` a dense ``[n,
    projection_dim]`` float32 Gaussian random projection (entries
    ``N(0, 1/projection_dim)``, seeded; Johnson-Lindenstrauss, inner products
    approximately preserved). Use the projection when the catalog is large:
    a next-item softmax probe on the sparse bag has ``vocab_size**2`` weights
    (20k items -> 400M), on the projection ``projection_dim * vocab_size``.
    """
    flat, user, n = as_ragged(history_item_ids)
    flat = flat.astype(np.int64)
    keep = (flat >= F.NUM_RESERVED) & (flat < vocab_size)
    if np.any(flat >= vocab_size):
        raise ValueError(
            f"history holds item id {flat.max()} >= vocab_size {vocab_size}; pass the "
            "item vocabulary size including the reserved ids."
        )
    x = scipy.sparse.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (user[keep], flat[keep])),
        shape=(n, vocab_size),
    )
    x.sum_duplicates()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).reshape(-1))
    x = scipy.sparse.diags(1.0 / np.maximum(norms, 1e-12)).astype(np.float32) @ x
    x = x.tocsr().astype(np.float32)
    if projection_dim is None:
        return x
    rng = np.random.default_rng(seed)
    proj = rng.normal(0.0, 1.0 / np.sqrt(projection_dim), size=(vocab_size, projection_dim))
    return np.asarray(x @ proj.astype(np.float32), dtype=np.float32)


def majority_floor(
    labels: Mapping[str, Mapping[str, Any]],
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: Sequence[int] = (0, 1, 2),
    model: str = "majority",
) -> list[dict]:
    """Predict the majority class of the sampled train labels for every test
    user (classification tasks and liked item; next item is skipped, see
    `popularity_floor`). Same label samples as `evaluate_embeddings`, so it
    varies with fraction and seed. Liked-item AUC of a constant is 0.5."""
    rows = []
    for name, per_split in labels.items():
        task = get_task(name)
        check_splits(name, per_split)
        for fraction in fractions:
            for seed in seeds:
                rows += [r.to_dict() for r in task.majority(per_split, fraction, seed, model)]
    return rows


def popularity_floor(
    counts: np.ndarray,
    test_targets: np.ndarray,
    *,
    test_history: np.ndarray | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: Sequence[int] = (0, 1, 2),
    k: int = 10,
    model: str = "popularity",
) -> list[dict]:
    """Next-item floor: the same ranking for every user, by ``counts``
    (`item_counts` of train users' histories: label-free, so the value is
    identical for every fraction and seed; rows are repeated so the report
    can draw it beside the probes). Equal counts are ordered by smaller item id
    (no ties reach the pessimistic tie rule). ``test_history`` set -> history
    excluded, as in `evaluate_embeddings`."""
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    num_items = counts.size
    order = np.lexsort((np.arange(num_items), -counts))  # count desc, id asc
    scores = np.empty(num_items)
    scores[order] = np.arange(num_items, 0, -1, dtype=np.float64)
    targets = np.asarray(test_targets).astype(np.int64).reshape(-1)
    _, scored = next_item_masks(targets, num_items)
    te = np.flatnonzero(scored)

    def rows_fn(start: int, stop: int) -> np.ndarray:
        return np.broadcast_to(scores, (stop - start, num_items))

    ranks = metrics.target_ranks(
        rows_fn, targets[te], exclude=None if test_history is None else test_history[te]
    )
    values = {
        f"hr@{k}": float(metrics.hits_at_k(ranks, k).mean()),
        f"ndcg@{k}": float(metrics.ndcg_gains_at_k(ranks, k).mean()),
    }
    details = dict(n_test=int(te.size), exclude_history=test_history is not None, k=int(k))
    return [
        r.to_dict()
        for fraction in fractions
        for seed in seeds
        for r in result_rows(model, NEXT_ITEM, fraction, seed, values, details)
    ]


def floor_rows(plan: EvalPlan) -> list[dict]:
    """Label-only floors (``majority``, ``popularity``) and the ``bag_of_items`` probe
    (sparse history counts unless the catalog exceeds ``bag_projection_above``)."""
    data, settings, clock = plan.data, plan.settings, plan.clock
    with clock("majority + popularity"):
        labels = {t: data.labels[t] for t in plan.tasks}  # next item: no majority rows
        rows = majority_floor(labels, fractions=plan.fractions, seeds=plan.seeds)
        if NEXT_ITEM in plan.tasks:
            rows += popularity_floor(
                item_counts(data.history["train"], data.num_items),
                data.labels[NEXT_ITEM]["test"],
                test_history=data.history["test"] if settings.exclude_history else None,
                fractions=plan.fractions,
                seeds=plan.seeds,
                k=settings.k,
            )
    projection = (
        settings.bag_projection_dim if data.num_items > settings.bag_projection_above else None
    )
    with clock("bag_of_items: features"):
        bag = {
            s: bag_of_items_features(
                data.history[s], data.num_items, projection_dim=projection, seed=0
            )
            for s in F.SPLITS
        }
    return rows + evaluate_features(
        plan, "bag_of_items", bag, fingerprint={"projection_dim": projection}
    )


def untrained_floor_rows(
    plan: EvalPlan,
    configs: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    data_fp: Mapping[str, Any],
) -> list[dict]:
    """The ``untrained`` floor: per encoder architecture and seed of the runs
    (``configs``, named ``names``), a fresh encoder's embeddings probed (cached
    under the architecture, the seed, the TensorFlow version and ``data_fp``).

    One architecture -> ``untrained``; several -> ``untrained(<first run>)`` each.
    The seeds of one architecture (the runs' pretraining seeds) share its name,
    and their rows carry ``pretrain_seed``; the caches of all but the lowest seed
    are named ``<floor>@seed<k>``.
    """
    architectures: dict[str, dict[int, str]] = {}  # encoder -> seed -> first run's name
    for config, name in zip(configs, names):
        seeds = architectures.setdefault(json.dumps(config["encoder"], sort_keys=True), {})
        seeds.setdefault(int(config.get("seed", 0)), name)
    rows = []
    for key, seeds in architectures.items():
        kwargs = json.loads(key)
        first = seeds[min(seeds)]
        floor = "untrained" if len(architectures) == 1 else f"untrained({first})"
        for seed in sorted(seeds):
            cache_name = floor if seed == min(seeds) else f"{floor}@seed{seed}"
            rows += _untrained_rows(plan, kwargs, seed, floor, cache_name, data_fp)
    return rows


def _untrained_rows(plan, kwargs, seed: int, floor: str, cache_name: str, data_fp) -> list[dict]:
    """One untrained encoder's rows (named ``floor``, cached as ``cache_name``)."""
    # "init": caches written before untrained encoders always used the Generator
    # initializers (they depended on the process) are not reused.
    floor_fp = {"encoder": kwargs, "seed": seed, "init": "tf_random_generator"}

    def embed_untrained():
        encoder = untrained_encoder({"encoder": kwargs, "seed": seed})
        emb = embed_users(encoder, plan.data, batch_size=plan.settings.embed_batch_size)
        return emb, encoder.item_embedding.embeddings.numpy()

    with plan.clock(f"{cache_name}: embed"):
        emb, item_emb, _ = cached_embeddings(
            plan.cache_dir,
            cache_name,
            {"untrained": floor_fp, "tensorflow": tf.__version__, "data": data_fp},
            embed_untrained,
        )
    return evaluate_features(
        plan,
        floor,
        emb,
        item_emb=item_emb,
        fingerprint=floor_fp,
        extra={"pretrain_seed": seed},
        cache_name=cache_name,
    )

"""The floors every learned model is read beside, as contenders of the same probes.

``majority`` / ``popularity`` (the `contenders.prior` contender: no features,
so every probe stays its prior predictor: the majority class of the
labelled users, the popularity ranking), ``bias`` (liked item only: the item
one-hot alone, fitted like every contender's per-item bias), ``bag_of_items`` (L2-normalized
history bags; item-kNN for next item), ``svd`` (a floor of the embedding's own
size: the rank-d truncated SVD of the interaction matrix, d the encoders'
output width) and ``untrained`` (an encoder of the runs' architecture,
freshly initialized, one per architecture). The history floors are fitted on
the histories of the users the encoders were trained on (`fit_rows`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from bt_tf.evaluation import contenders
from bt_tf.evaluation.contenders import Contender
from bt_tf.evaluation.embedding_cache import cached_embeddings, embed_users, untrained_encoder
from bt_tf.evaluation.eval_data import EvalData
from bt_tf.evaluation.protocol import Population
from bt_tf.evaluation.settings import EvalSettings
from bt_tf.evaluation.tasks import LIKED_ITEM
from bt_tf.evaluation.timing import StageClock
from bt_tf.features import SPLITS

__all__ = ["fit_rows", "history_floors", "untrained_floors"]


def fit_rows(population: Population, train_users: str) -> np.ndarray:
    """Population rows of the users the encoders were trained on (``train_users`` of
    their config: ``train``, the train split, or ``all``): the histories the
    history floors and the popularity prior are computed from (label-free)."""
    splits = ("train",) if train_users == "train" else SPLITS
    return np.flatnonzero(np.isin(population.split_of, splits))


def history_floors(
    history: np.ndarray,
    num_items: int,
    rows: np.ndarray,
    *,
    dim: int,
    settings: EvalSettings,
    clock: StageClock,
) -> list[Contender]:
    """``prior`` (majority / popularity), ``bias`` (liked item's item one-hot alone),
    ``bag_of_items`` and ``svd`` (rank ``dim``)."""
    large = num_items > settings.bag_projection_above
    with clock("bag_of_items + svd: features"):
        bag = contenders.bag_of_items(
            history,
            num_items,
            rows,
            projection_dim=settings.bag_projection_dim if large else None,
            knn_top_k=settings.knn_top_k if large else None,
        )
        svd = contenders.svd(history, num_items, rows, dim)
    n = history.shape[0]
    return [contenders.prior(n), contenders.item_bias(n, (LIKED_ITEM,)), bag, svd]


def untrained_floors(
    data: EvalData,
    population: Population,
    configs: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    *,
    data_fp: Mapping[str, Any],
    cache_dir: str | None,
    settings: EvalSettings,
    clock: StageClock,
) -> list[Contender]:
    """The ``untrained`` floor: per encoder architecture of the runs (``configs``,
    named ``names``), one fresh encoder (the first run's seed), its embeddings
    cached under the architecture, the TensorFlow version and ``data_fp``.

    One architecture -> ``untrained``; several -> ``untrained(<first run>)`` each.
    """
    architectures: dict[str, tuple[int, str]] = {}
    for config, name in zip(configs, names):
        key = json.dumps(config["encoder"], sort_keys=True)
        architectures.setdefault(key, (int(config.get("seed", 0)), name))
    out = []
    for key, (seed, first) in architectures.items():
        kwargs = json.loads(key)
        floor = "untrained" if len(architectures) == 1 else f"untrained({first})"
        # "init": caches written before untrained encoders always used the Generator
        # initializers (they depended on the process) are not reused.
        floor_fp = {"encoder": kwargs, "seed": seed, "init": "tf_random_generator"}

        def embed_untrained(kwargs=kwargs, seed=seed):
            encoder = untrained_encoder({"encoder": kwargs, "seed": seed})
            emb = embed_users(encoder, data, batch_size=settings.embed_batch_size)
            return emb, encoder.item_embedding.embeddings.numpy()

        with clock(f"{floor}: embed"):
            emb, items, _ = cached_embeddings(
                cache_dir,
                floor,
                {"untrained": floor_fp, "tensorflow": tf.__version__, "data": data_fp},
                embed_untrained,
            )
        out.append(Contender(floor, 0, population.stack(emb), items, None, floor_fp))
    return out

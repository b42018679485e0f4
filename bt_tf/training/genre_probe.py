"""The quick favorite-genre probe: the health check after training and the tuner's objective.

Logistic regression on frozen user embeddings predicts each user's future
favorite genre (category); trained on train users, scored on eval users. The
full protocol, with label fractions and seeds, is `bt_tf.evaluate`.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from bt_tf.data.embeddings import embed_split
from bt_tf.evaluation import labels
from bt_tf.features import FUTURE_GENRE_IDS

SPLITS = ("train", "eval")  # fitted on the first, scored on the second


def labelled(embeddings: dict, kept: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (embeddings, favorite genre)} of the users with a future genre.

    ``kept[split]`` holds the split's ``FUTURE_GENRE_IDS`` (as `embed_split` keeps them).
    """
    out = {}
    for split in SPLITS:
        y = labels.favorite_genre(kept[split][FUTURE_GENRE_IDS])
        out[split] = (embeddings[split][y >= 0], y[y >= 0])
    return out


def fit_and_score(data: dict[str, tuple[np.ndarray, np.ndarray]], seed: int) -> dict:
    """Fits the probe on ``data["train"]``; its accuracy and the majority class's on eval."""
    (x_train, y_train), (x_eval, y_eval) = data["train"], data["eval"]
    scaler = StandardScaler().fit(x_train)
    head = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    head.fit(scaler.transform(x_train), y_train)
    majority = np.bincount(y_train).argmax()
    return {
        "favorite_genre_accuracy": float(head.score(scaler.transform(x_eval), y_eval)),
        "majority_accuracy": float(np.mean(y_eval == majority)),
        "eval_users": int(len(y_eval)),
    }


def genre_probe(encoder, artifact_dir: str, seed: int, max_len: int | None = None) -> dict:
    """Embeds train and eval users with ``encoder`` and scores the probe (`fit_and_score`)."""
    embeddings, kept = {}, {}
    for split in SPLITS:
        embeddings[split], kept[split] = embed_split(
            encoder, artifact_dir, split, max_len=max_len, keep=[FUTURE_GENRE_IDS]
        )
    return fit_and_score(labelled(embeddings, kept), seed)

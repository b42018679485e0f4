"""Leave-one-out validation: the validation item's full-catalog rank, judged every epoch.

Under ``--protocol=leave_one_out`` each user's stored future is ``[item n-1, item n]``
(`bt_tf.training.config.leave_one_out_data`): the model trains on the history (items
``1..n-2``), item n-1 validates and item n tests. At every epoch end
`NextItemValidation` embeds every validated user's history with the model's encoder,
scores the whole catalog with the model's item table (`model.item_embeddings()`), and
ranks item n-1 against every real item but the user's own earlier items (the whole
history; a target the user consumed before stays rankable), ties counted against it
(`bt_tf.evaluation.metrics.target_ranks`). It writes ``val_ndcg@10`` and ``val_hr@10``
into the epoch's logs, where the callbacks after it (`progress.EpochEnd`, TensorBoard)
read them: epoch selection and early stopping follow what the model is for.

On logs with more users than `MAX_VALIDATION_USERS`, a fixed seeded sample of that many
is validated (the figure is then a sample mean; its standard error at 10k users is
below 0.003 for NDCG@10), so an epoch's validation stays a small part of its cost.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras)
from bt_tf import features as F
from bt_tf.data.dataset import Sequences
from bt_tf.data.embeddings import embed_items
from bt_tf.evaluation.metrics import hits_at_k, ndcg_gains_at_k, target_ranks

MAX_VALIDATION_USERS = 10_000
K = 10


def leave_one_out_cases(sequences: Sequences, stage: str, max_len: int, num_items: int) -> dict:
    """One leave-one-out stage's scored users: ``{"inputs" [m, max_len], "targets" [m],
    "seen" (CSR [m, num_items]: every earlier item), "users" [m] (their rows in
    ``sequences``), "skipped" {reason: count}}``.

    ``stage="val"``: the input is the history, the target item n-1 (``future[:, 0]``);
    ``"test"``: the input is the history followed by item n-1 (its most recent
    ``max_len`` items), the target item n (``future[:, 1]``). The earlier items are the
    whole stored history (complete in a leave-one-out artifact), plus item n-1 at test,
    except the target itself (a target consumed before stays rankable). Users without
    both future items, or whose target is not a real item (outside the vocabulary), are
    skipped and counted.
    """
    if stage not in ("val", "test"):
        raise ValueError(f"stage must be 'val' or 'test', got {stage!r}")
    future = sequences.future
    if future.ndim != 2 or future.shape[1] < 2:
        raise ValueError(
            f"leave-one-out needs 2 future items per user (future_len=2), got future of "
            f"shape {future.shape}"
        )
    targets = future[:, 0 if stage == "val" else 1]
    extra = future[:, 0] if stage == "test" else None
    short = future[:, 1] == F.PAD_ID
    oov = ~short & ((targets < F.NUM_RESERVED) | (targets >= num_items))
    users = np.flatnonzero(~short & ~oov)
    seen = sequences.seen(num_items, extra)[users].tolil()
    seen[np.arange(users.size), targets[users]] = False  # the target stays rankable
    return {
        "inputs": sequences.tails(max_len, extra)[users],
        "targets": targets[users],
        "seen": seen.tocsr(),
        "users": users,
        "skipped": {"fewer_than_3_items": int(short.sum()), "target_not_in_vocab": int(oov.sum())},
    }


def last_history_item_cases(sequences: Sequences, max_len: int, num_items: int) -> dict:
    """The validation of a history/future run (`leave_one_out_cases`' layout): each user's
    LAST HISTORY item, ranked after the rest of the history (its most recent ``max_len``).
    Training holds that item out (`bt_tf.data.dataset.make_dataset`'s ``hold_out``); no
    future item (a downstream label) is read. The earlier items excluded are the stored
    history's (at most the artifact's ``max_len``). Users with fewer than 2 history items,
    or whose last one is not a real item, are skipped and counted."""
    lengths = sequences.row_lengths
    ends = np.cumsum(lengths)
    short = lengths < 2
    targets = np.where(short, F.PAD_ID, sequences.values[np.maximum(ends - 1, 0)])
    oov = ~short & ((targets < F.NUM_RESERVED) | (targets >= num_items))
    users = np.flatnonzero(~short & ~oov)
    before = Sequences(
        np.delete(sequences.values, ends[lengths > 0] - 1), np.maximum(lengths - 1, 0),
        sequences.future,
    )  # fmt: skip
    seen = before.seen(num_items)[users].tolil()
    seen[np.arange(users.size), targets[users]] = False  # the target stays rankable
    return {
        "inputs": before.tails(max_len)[users],
        "targets": targets[users],
        "seen": seen.tocsr(),
        "users": users,
        "skipped": {
            "fewer_than_2_history_items": int(short.sum()),
            "target_not_in_vocab": int(oov.sum()),
        },  # fmt: skip
    }


def full_ranking(user_emb: np.ndarray, item_emb: np.ndarray, targets: np.ndarray, seen):
    """Each target's 1-based rank among every real item but the ``seen`` ones (CSR
    ``[n, num_items]``, `leave_one_out_cases`); ties count against the target."""
    user_emb = np.asarray(user_emb, np.float32)
    item_t = np.ascontiguousarray(np.asarray(item_emb, np.float32).T)
    return target_ranks(lambda a, b: user_emb[a:b] @ item_t, targets, exclude=seen,
                        chunk_size=1024)  # fmt: skip


class NextItemValidation(tf.keras.callbacks.Callback):
    """Writes ``val_ndcg@10`` / ``val_hr@10`` of the validation item into each epoch's logs.

    Args:
        cases: the validated users (`leave_one_out_cases` "val" of a leave-one-out
            artifact, `last_history_item_cases` of a history/future one).
        seed: picks the `MAX_VALIDATION_USERS` sample on larger logs.
        batch_size: users embedded at once.

    The model must have ``encoder`` and ``item_embeddings()`` (the DE and BT+DE models).
    Place it before the callbacks that read the figures.
    """

    def __init__(self, cases: dict, *, seed: int = 0, batch_size: int = 512):
        super().__init__()
        index = np.arange(cases["targets"].size)
        if index.size > MAX_VALIDATION_USERS:
            rng = np.random.default_rng(seed)
            index = np.sort(rng.choice(index, MAX_VALIDATION_USERS, replace=False))
        self.inputs, self.targets = cases["inputs"][index], cases["targets"][index]
        self.seen = cases["seen"][index]
        self.num_users = int(index.size)
        self.batch_size = batch_size

    def scores(self) -> dict[str, float]:
        """``{"val_ndcg@10", "val_hr@10"}`` of the model as it is now."""
        encoder = self.model.encoder
        user_emb = embed_items(encoder, self.inputs, batch_size=self.batch_size)
        item_emb = self.model.item_embeddings().numpy()
        ranks = full_ranking(user_emb, item_emb, self.targets, self.seen)
        return {
            f"val_ndcg@{K}": float(ndcg_gains_at_k(ranks, K).mean()),
            f"val_hr@{K}": float(hits_at_k(ranks, K).mean()),
        }

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.num_users:
            logs.update(self.scores())

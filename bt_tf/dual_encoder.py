"""The TFRS dual-encoder (DE) baseline and the joint BT+DE model.

DESIGN.md, "Model": the baseline is a TensorFlow Recommenders two-tower
retrieval model trained with in-batch softmax on next-item targets. Its query
tower is the same `SequenceEncoder` class (and size) as the Barlow Twins
backbone, so the two are compared at equal encoder capacity; the candidate
tower is an item embedding table (`ItemTower`).

Training pairs (`next_item_pairs`): from a right-padded history
`[i_0, ..., i_{n-1}, 0, ...]` a cut `c` is drawn uniformly in `[1, n - 1]`;
the query is the prefix `[i_0, ..., i_{c-1}]` (re-padded to the same width)
and the target is `i_c`. Rows with fewer than 2 items have no pair: their
target is `PAD_ID`, and the loss gives them weight 0 and never uses them as
negatives, so batch shapes stay static (no filtering inside `tf.data`).

Batches: `DualEncoderModel` reads `{"prefix": int [B, L], "target": int [B]}`;
`JointModel` additionally reads `{"view1", "view2"}` (two augmented views of
the full history, as `BarlowTwinsModel`). Extra keys are ignored.

Both models expose the same API as `BarlowTwinsModel` for probes and export:
`model(items)` is the user embedding `[B, dim]` (the encoder output), and
`model.item_embeddings()` the candidate matrix `[vocab_size, dim]` whose row
`i` scores item id `i` by dot product (rows `< NUM_RESERVED` are the reserved
pad/mask/OOV ids, not items: exclude them when recommending).

In-batch negatives span the GLOBAL batch under `tf.distribute` (see
`DualEncoderModel`), so R replicas give the same loss and update as one
device on the same global batch; plain TFRS uses only each replica's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

import bt_tf  # noqa: F401  (One Keras: sets TF_USE_LEGACY_KERAS before tensorflow)
from bt_tf.augment import sequence_lengths
from bt_tf.features import NUM_RESERVED, PAD_ID
from bt_tf.input import ITEMS
from bt_tf.losses import barlow_twins_terms
from bt_tf.models import VIEW1, VIEW2

PREFIX = "prefix"
TARGET = "target"

# Pinned so that eager (CPU kernel) and XLA draw the same bits (as bt_tf.augment).
_ALG = "philox"
# Fold-in constant: the cut's random stream, so a seed shared with the view
# augmentation gives independent cuts.
_STREAM_CUT = 101


def _fold(seed, stream: int) -> tf.Tensor:
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        raise TypeError(f"seed must be an int32/int64 tensor of shape [2], got {seed.dtype}.")
    seed.shape.assert_is_compatible_with([2])
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), stream, alg=_ALG)


def _uniform_int(upper: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Per row an int uniform in `[0, upper)` (0 where `upper <= 1`), stateless.

    Built from raw Philox bits (top 53 bits of a uint64 → exact float64 in
    [0, 1)), because float-typed stateless draws differ between eager and XLA.
    """
    bits = tf.random.stateless_uniform(
        tf.shape(upper), seed=seed, minval=None, maxval=None, dtype=tf.uint64, alg=_ALG
    )
    u = tf.cast(tf.bitwise.right_shift(bits, 11), tf.float64) * (2.0**-53)
    draw = tf.cast(tf.floor(u * tf.cast(upper, tf.float64)), tf.int32)
    return tf.clip_by_value(draw, 0, tf.maximum(upper - 1, 0))


# --------------------------------------------------------------------------
# Training pairs


def next_item_pairs(items: tf.Tensor, seed) -> tuple[tf.Tensor, tf.Tensor]:
    """Random (prefix, next item) pairs from a padded batch of histories.

    For a row with `n >= 2` real items a cut `c` is drawn uniformly from
    `[1, n - 1]`; `prefix` holds the first `c` items then `PAD_ID`, `target`
    is `items[c]`. Rows with `n < 2` keep `prefix = items` and get
    `target = PAD_ID`, which the DE loss treats as "no pair" (weight 0, not a
    negative). Vectorized stateless ops: compiles with `jit_compile=True`,
    same seed → same pairs.

    Args:
        items: int `[B, L]` item ids, right-padded with `PAD_ID`.
        seed: int `[2]` stateless seed.

    Returns:
        `(prefix, target)`: `prefix` like `items` `[B, L]`, `target` `[B]`,
        both of `items`' dtype.
    """
    lengths = sequence_lengths(items)
    valid = lengths >= 2
    width = tf.shape(items)[1]
    cut = 1 + _uniform_int(lengths - 1, _fold(seed, _STREAM_CUT))  # [B] in [1, n - 1]
    # Rows without a pair get cut = 1, which may not exist when L = 1.
    cut = tf.minimum(cut, tf.maximum(width - 1, 0))
    pad = tf.cast(PAD_ID, items.dtype)
    positions = tf.range(width)[tf.newaxis, :]
    prefix = tf.where(valid[:, tf.newaxis] & (positions >= cut[:, tf.newaxis]), pad, items)
    target = tf.where(valid, tf.gather(items, cut, axis=1, batch_dims=1), pad)
    return prefix, target


def add_next_item_pairs(
    ds: tf.data.Dataset,
    seed: int,
    *,
    input_pipeline_id: int = 0,
    redraw_each_epoch: bool = True,
) -> tf.data.Dataset:
    """Adds `"prefix"` and `"target"` (see `next_item_pairs`) to batches of `ds`.

    Same seeding as `bt_tf.input`'s views: batch `t` uses the stateless seed
    `[r_t, input_pipeline_id]`, `r_t` from `tf.data.Dataset.random(seed)`; the
    pairs are thus fixed by `seed`, and independent of the views even when both
    use the same `seed` (`next_item_pairs` folds in its own stream constant).

    Args:
        ds: batches of `bt_tf.input.make_dataset` (dicts with `"items"` int `[B, L]`).
        seed: seeds the cuts.
        input_pipeline_id: `InputContext.input_pipeline_id` when the dataset is
            built per worker, so workers draw different cuts.
        redraw_each_epoch: draw new cuts every epoch (training); False keeps the
            same pairs every epoch (comparable eval numbers across epochs).

    Returns:
        `ds` with `"prefix"` int `[B, L]` and `"target"` int `[B]` added.
    """
    if not isinstance(ds.element_spec, dict) or ITEMS not in ds.element_spec:
        raise ValueError(
            f"add_next_item_pairs needs batches with {ITEMS!r} (int [B, L]); got "
            f"{ds.element_spec}. Build ds with bt_tf.input.make_dataset and keep "
            f"{ITEMS!r} in `outputs`."
        )
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=redraw_each_epoch)

    def add_pairs(batch, draw):
        batch_seed = tf.stack([draw, tf.constant(input_pipeline_id, tf.int64)])
        batch = dict(batch)
        batch[PREFIX], batch[TARGET] = next_item_pairs(batch[ITEMS], batch_seed)
        return batch

    return tf.data.Dataset.zip((ds, draws)).map(
        add_pairs, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def _pairs(data, extra_keys: Sequence[str] = (), model_name: str = "DualEncoderModel"):
    """Unpacks a batch: a dict with PREFIX/TARGET (+ extra keys), or `(dict,)`."""
    if isinstance(data, (tuple, list)):
        data = data[0]
    keys = (PREFIX, TARGET, *extra_keys)
    if not isinstance(data, dict) or any(k not in data for k in keys):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{model_name} expects batches with keys {list(keys)} ({PREFIX!r}: int "
            f"[B, L], {TARGET!r}: int [B]), got {got}. Add the next-item pairs with "
            "bt_tf.dual_encoder.add_next_item_pairs(ds, seed)"
            + (" on a dataset made with an augment_policy." if extra_keys else ".")
        )
    return data


# --------------------------------------------------------------------------
# Candidate tower


@tf.keras.utils.register_keras_serializable(package="bt_tf")
class ItemTower(tf.keras.layers.Layer):
    """Item id → candidate embedding: an embedding table, optionally + genres.

    Without genres the candidate of id `i` is row `i` of one `[vocab_size, dim]`
    table (`self.embedding`), which is what `bt_tf.export` restores from a
    checkpoint. With `item_genres` it is that row plus the mean of the item's
    genre embeddings (a second, `[num_genres, dim]`, table); export must then
    take `model.item_embeddings()` instead of the raw table.

    Args:
        vocab_size: item vocabulary size including the reserved ids.
        dim: embedding width (must equal the query tower's output width).
        item_genres: optional int `[vocab_size, G]` genre ids of each item,
            right-padded with `PAD_ID` (genre vocabulary ids, reserved 0/1/2).
            Held as a constant, not a variable: pass it again when rebuilding.
        num_genres: genre vocabulary size; required with `item_genres`.

    Call: `tower(ids)` with int ids of any shape `S` → float `S + [dim]`.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        item_genres: np.ndarray | None = None,
        num_genres: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.dim = dim
        self.num_genres = num_genres
        self.embedding = tf.keras.layers.Embedding(vocab_size, dim, name="embedding")
        self.item_genres = None
        self.genre_embedding = None
        if item_genres is not None:
            item_genres = np.asarray(item_genres)
            if item_genres.ndim != 2 or item_genres.shape[0] != vocab_size:
                raise ValueError(
                    f"item_genres must be int [vocab_size={vocab_size}, G] (genre ids "
                    f"per item, PAD_ID-padded), got shape {item_genres.shape}."
                )
            if num_genres is None or item_genres.max(initial=0) >= num_genres:
                raise ValueError(
                    f"num_genres={num_genres} must be given with item_genres and exceed "
                    f"its largest id {item_genres.max(initial=0)} (the genre vocab size)."
                )
            self.item_genres = tf.constant(item_genres, tf.int32)
            self.genre_embedding = tf.keras.layers.Embedding(
                num_genres, dim, name="genre_embedding"
            )

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        out = self.embedding(ids)
        if self.item_genres is None:
            return out
        genres = tf.gather(self.item_genres, ids)  # S + [G]
        weights = tf.cast(tf.not_equal(genres, PAD_ID), out.dtype)[..., tf.newaxis]
        summed = tf.reduce_sum(self.genre_embedding(genres) * weights, axis=-2)
        return out + tf.math.divide_no_nan(summed, tf.reduce_sum(weights, axis=-2))

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, dim=self.dim, num_genres=self.num_genres)
        if self.item_genres is not None:
            config["item_genres"] = self.item_genres.numpy().tolist()
        return config


class _LiveCatalog(tfrs.layers.factorized_top_k.TopK):
    """Exact top-k over the CURRENT candidate embeddings of all real items.

    TFRS's `BruteForce` copies the candidates into variables at `index()` time,
    which goes stale as the item tower trains; this layer recomputes them at
    every query, so `FactorizedTopK` always scores the model being evaluated.
    `catalog_fn()` returns `(embeddings [N, dim], ids [N])`.
    """

    def __init__(self, catalog_fn: Callable[[], tuple[tf.Tensor, tf.Tensor]], k: int, **kwargs):
        super().__init__(k=k, **kwargs)
        self._catalog_fn = catalog_fn

    def index(self, candidates=None, identifiers=None):
        raise NotImplementedError("_LiveCatalog reads the item tower; it has no index.")

    def call(self, queries: tf.Tensor, k: int | None = None):
        embeddings, ids = self._catalog_fn()
        scores, indices = tf.math.top_k(
            self._compute_score(queries, embeddings), k=k if k is not None else self._k
        )
        return scores, tf.gather(ids, indices)

    def is_exact(self) -> bool:
        return True


# --------------------------------------------------------------------------
# In-batch softmax over the global batch


class RetrievalTerms(NamedTuple):
    """The DE loss of one step.

    `loss` is the mean in-batch softmax cross-entropy over the valid pairs of
    the GLOBAL batch (identical on every replica, what the metrics report);
    `replica_share` is this replica's rows' part of it (Σ over replicas =
    `loss`), the quantity to differentiate (see `DualEncoderModel`).
    """

    replica_share: tf.Tensor
    loss: tf.Tensor
    query: tf.Tensor  # [b, dim] this replica's user embeddings
    weight: tf.Tensor  # [b] 1.0 for valid pairs, 0.0 for target == PAD_ID


def _replica_context():
    """The replica context when running on several replicas, else None."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None
    return ctx


def _num_replicas() -> int:
    ctx = tf.distribute.get_replica_context()
    return 1 if ctx is None else ctx.num_replicas_in_sync


def _gather_global(ctx, values: list[tf.Tensor]) -> list[tf.Tensor]:
    """All-gathers `[b, ...]` tensors over replicas, this replica's rows first.

    The gathered order is replica 0, 1, ...; rolling by this replica's offset
    (the sizes of the replicas before it; shards may be uneven) puts its own
    rows at the top, so query `i` keeps its positive in column `i` (the
    `tf.eye` labels of `tfrs.tasks.Retrieval`), as in TFRS's
    `_cross_replica_concat`. The order of the negatives does not matter. The
    gradient of `all_gather` sums the upstream gradient over replicas and
    hands each replica its own rows' part.
    """
    # int64, not int32: collectives refuse a mix of host-memory (int32) and
    # device tensors.
    sizes = ctx.all_gather(tf.shape(values[0], out_type=tf.int64)[:1], axis=0)  # [R]
    offset = tf.reduce_sum(sizes[: ctx.replica_id_in_sync_group])
    # One collective per tensor: a batched all_gather concatenates its inputs
    # and so needs them all of one dtype.
    return [tf.roll(ctx.all_gather(v, axis=0), -offset, axis=0) for v in values]


class DualEncoderModel(tfrs.Model):
    """TFRS two-tower retrieval: `SequenceEncoder` queries, `ItemTower` candidates.

    The loss is `tfrs.tasks.Retrieval`'s softmax cross-entropy of each query
    against the targets of the batch (its own target the positive, the others
    negatives), scores `q·e / temperature`, averaged over the valid pairs.

    How the global batch is formed: under `tf.distribute` each replica holds
    b of the N rows. The candidates (target embeddings, ids, validity) are
    all-gathered so every query is scored against all N targets, exactly as
    on one device; each replica's loss is its rows' cross-entropies summed and
    divided by the global count of valid pairs (an all-reduce), so the
    replicas' losses sum to the single-device mean loss. Backprop through the
    all-gather sends each replica the gradient of the WHOLE loss w.r.t. its own
    targets' embeddings, `apply_gradients` sums over replicas: the applied
    gradient is exactly the single-device one, with no extra division by R
    (unlike the BT loss, which is already global on every replica).

    Args:
        encoder: query tower, int items `[B, L]` → `[B, dim]` (a `SequenceEncoder`,
            the same class and size as the BT backbone).
        item_tower: candidate tower, int ids → `[..., dim]`; default a plain
            `ItemTower(vocab_size, encoder.output_dim)`.
        vocab_size: item vocabulary size incl. reserved ids; default
            `encoder.vocab_size` (checked against it when both are known).
        temperature: softmax temperature; scores are divided by it.
        remove_accidental_hits: exclude in-batch negatives whose item equals
            the query's target (several users with the same next item); off by
            default, as in TFRS.
        global_negatives: score against the global batch's targets (default);
            False = TFRS's per-replica negatives (the update then depends on the
            number of replicas; kept for comparison).
        top_k: ks of `tfrs.metrics.FactorizedTopK` computed in `test_step` only
            (evaluate / validation): exact retrieval over all real items (ids
            `>= NUM_RESERVED`) with the current towers, reported as
            "factorized_top_k/top_{k}_categorical_accuracy" (= HR@k, one target
            per query; history items are not excluded). None = off.

    Metrics: "loss" (global-batch mean cross-entropy) in train and test, plus
    the top-k accuracies in test.

    Under `tf.distribute`, build and compile inside `strategy.scope()`. The
    variables are created by the first step (or earlier by `model(items)` and
    `model.item_embeddings()`, e.g. to `set_weights`).
    """

    def __init__(
        self,
        encoder,
        item_tower=None,
        *,
        vocab_size: int | None = None,
        temperature: float = 1.0,
        remove_accidental_hits: bool = False,
        global_negatives: bool = True,
        top_k: Sequence[int] | None = (10,),
        **kwargs,
    ):
        super().__init__(**kwargs)
        encoder_vocab = getattr(encoder, "vocab_size", None)
        if vocab_size is None:
            vocab_size = encoder_vocab
        if vocab_size is None:
            raise ValueError("Pass vocab_size: the encoder does not say its vocabulary size.")
        if encoder_vocab is not None and encoder_vocab != vocab_size:
            raise ValueError(
                f"vocab_size={vocab_size} differs from the encoder's {encoder_vocab}; "
                "both towers must use the same item vocabulary."
            )
        if vocab_size <= NUM_RESERVED:
            raise ValueError(f"vocab_size={vocab_size} leaves no real items (ids >= 3).")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.encoder = encoder
        self.vocab_size = vocab_size
        self.item_tower = (
            item_tower
            if item_tower is not None
            else ItemTower(vocab_size, encoder.output_dim, name="item_tower")
        )
        self.temperature = temperature
        self.remove_accidental_hits = remove_accidental_hits
        self.global_negatives = global_negatives
        self.task = tfrs.tasks.Retrieval(
            # Per-row cross-entropies summed; normalized by the global count in
            # `retrieval_terms`, where the replicas' shares are formed.
            loss=tf.keras.losses.CategoricalCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.SUM
            ),
            temperature=temperature,
            remove_accidental_hits=remove_accidental_hits,
        )
        self.top_k = None
        if top_k:
            self.top_k = tfrs.metrics.FactorizedTopK(
                _LiveCatalog(self._catalog, k=max(top_k)), ks=tuple(top_k)
            )
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")

    # ---- API shared with BarlowTwinsModel (probes, export)

    def call(self, items, training=False):
        """User embedding `[B, dim]` of int items `[B, L]` (the query tower)."""
        return self.encoder(items, training=training)

    def item_embeddings(self) -> tf.Tensor:
        """Candidate matrix `[vocab_size, dim]`: row i scores item id i (rows < 3 reserved)."""
        return self.item_tower(tf.range(self.vocab_size))

    def _catalog(self):
        ids = tf.range(NUM_RESERVED, self.vocab_size)
        return self.item_tower(ids), ids

    # ---- losses and steps

    @property
    def _train_trackers(self):
        return [self.loss_tracker]

    @property
    def metrics(self):
        top_k = self.top_k.metrics if self.top_k is not None else []
        return self._train_trackers + list(top_k)

    def retrieval_terms(self, prefix, target, training=False) -> RetrievalTerms:
        """In-batch softmax of `encoder(prefix)` against `item_tower(target)`.

        Args:
            prefix: int `[b, L]` query sequences (this replica's rows).
            target: int `[b]` next items; `PAD_ID` = no pair (weight 0, and
                not a negative for the other queries).
            training: passed to the encoder.
        """
        query = self.encoder(prefix, training=training)
        target = tf.cast(target, tf.int32)
        candidates = self.item_tower(target)
        weight = tf.cast(tf.not_equal(target, PAD_ID), tf.float32)
        ctx = _replica_context()
        candidate_ids, candidate_weight = target, weight
        if ctx is not None and self.global_negatives:
            candidates, candidate_ids, candidate_weight = _gather_global(
                ctx, [candidates, tf.cast(target, tf.int64), weight]
            )
        score_mask = tf.broadcast_to(
            tf.cast(candidate_weight, tf.bool)[tf.newaxis, :],
            [tf.shape(query)[0], tf.shape(candidates)[0]],
        )
        summed = self.task(
            query,
            candidates,
            sample_weight=weight,
            candidate_ids=candidate_ids if self.remove_accidental_hits else None,
            compute_metrics=False,
            score_mask=score_mask,
        )
        # How the global loss is formed: one all-reduce (SUM) of this replica's
        # summed cross-entropy and valid-pair count gives the global ones.
        count = tf.reduce_sum(weight)
        total, global_count = summed, count
        if ctx is not None:
            total, global_count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [summed, count])
        global_count = tf.stop_gradient(global_count)
        return RetrievalTerms(
            replica_share=tf.math.divide_no_nan(summed, global_count),
            loss=tf.math.divide_no_nan(total, global_count),
            query=query,
            weight=weight,
        )

    def _objective(self, inputs, training: bool) -> tuple[tf.Tensor, RetrievalTerms]:
        """(this replica's share of the loss, the DE terms); updates the loss trackers."""
        data = _pairs(inputs)
        terms = self.retrieval_terms(data[PREFIX], data[TARGET], training=training)
        self.loss_tracker.update_state(terms.loss)
        return terms.replica_share, terms

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        """This replica's share of the loss (Σ over replicas = the global mean loss).

        Also updates the loss trackers with the global-batch values. `inputs`:
        `{"prefix": int [b, L], "target": int [b]}` (JointModel: + views).
        """
        return self._objective(inputs, training)[0]

    def _regularization_share(self):
        # Every replica adds the full regularization loss; apply_gradients sums
        # the R replicas' gradients, hence the division by R.
        if not self.losses:
            return 0.0
        return tf.add_n(self.losses) / _num_replicas()

    def train_step(self, data):
        with tf.GradientTape() as tape:
            # The share is already scaled for the replica sum (class docstring).
            share = self.compute_loss(data, training=True) + self._regularization_share()
        self.optimizer.minimize(share, self.trainable_variables, tape=tape)
        return {m.name: m.result() for m in self._train_trackers}

    def test_step(self, data):
        _, terms = self._objective(data, training=False)
        if self.top_k is not None:
            target = tf.cast(_pairs(data)[TARGET], tf.int32)
            self.top_k.update_state(
                terms.query,
                self.item_tower(target),
                true_candidate_ids=target,
                sample_weight=terms.weight,
            )
        return {m.name: m.result() for m in self.metrics}


class JointModel(DualEncoderModel):
    """One encoder trained with `DE loss + bt_weight × Barlow Twins loss` (`--model=bt+de`).

    The DE part is `DualEncoderModel`'s (next-item pairs, global in-batch
    negatives); the BT part is `BarlowTwinsModel`'s (`bt_tf.losses`
    `barlow_twins_terms` on the projected views, global-batch statistics).
    Batches: `{"view1", "view2": int [B, L], "prefix": int [B, L], "target": int [B]}`.

    Args:
        encoder: the shared `SequenceEncoder` (query tower and BT backbone).
        projector: BT projector, `bt_tf.encoders.build_projector(...)`.
        bt_weight: weight of the BT loss; 0 gives exactly the DE loss and update.
        lambd: BT off-diagonal weight.
        eps: BT standardization epsilon.
        item_tower, vocab_size, temperature, remove_accidental_hits,
        global_negatives, top_k: as in `DualEncoderModel`.

    Metrics: "loss" (= de_loss + bt_weight × bt_loss), "de_loss", "bt_loss"
    (= on_diag + lambd × off_diag), all over the global batch; test adds top-k.
    """

    def __init__(
        self,
        encoder,
        projector,
        item_tower=None,
        *,
        bt_weight: float = 1.0,
        lambd: float = 5e-3,
        eps: float = 1e-5,
        **kwargs,
    ):
        super().__init__(encoder, item_tower, **kwargs)
        if bt_weight < 0:
            raise ValueError(f"bt_weight must be >= 0, got {bt_weight}.")
        self.projector = projector
        self.bt_weight = bt_weight
        self.lambd = lambd
        self.eps = eps
        self.de_loss_tracker = tf.keras.metrics.Mean(name="de_loss")
        self.bt_loss_tracker = tf.keras.metrics.Mean(name="bt_loss")

    @property
    def _train_trackers(self):
        return [self.loss_tracker, self.de_loss_tracker, self.bt_loss_tracker]

    def project(self, items, training=False):
        """Projector output `[B, D]` of int items `[B, L]` (what the BT loss sees)."""
        return self.projector(self.encoder(items, training=training), training=training)

    def _objective(self, inputs, training: bool) -> tuple[tf.Tensor, RetrievalTerms]:
        """This replica's share of `de_loss + bt_weight × bt_loss` (Σ over replicas = total)."""
        data = _pairs(inputs, (VIEW1, VIEW2), model_name="JointModel")
        de = self.retrieval_terms(data[PREFIX], data[TARGET], training=training)
        z1 = self.project(data[VIEW1], training=training)
        z2 = self.project(data[VIEW2], training=training)
        bt = barlow_twins_terms(z1, z2, eps=self.eps)
        bt_loss = bt.on_diag + self.lambd * bt.off_diag
        # Gradient scaling: `de.replica_share` already sums to the DE loss over
        # replicas, while `bt_loss` is the global BT loss on EVERY replica
        # (all-reduced statistics), so only the BT part is divided by R here;
        # apply_gradients then sums the replicas' gradients to d(total)/dθ.
        share = de.replica_share + self.bt_weight * bt_loss / _num_replicas()
        total = de.loss + self.bt_weight * bt_loss
        self.loss_tracker.update_state(total)
        self.de_loss_tracker.update_state(de.loss)
        self.bt_loss_tracker.update_state(bt_loss)
        return share, de

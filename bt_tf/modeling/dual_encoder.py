"""The TFRS dual-encoder (DE) baseline and the joint BT+DE model.

DESIGN.md, "Model": the baseline is a TensorFlow Recommenders two-tower
retrieval model trained with in-batch softmax on next-item targets. Its query
tower is the same `SequenceEncoder` class (and size) as the Barlow Twins
backbone, so the two are compared at equal encoder capacity; the candidate
tower is an item embedding table (`ItemTower`).

Every position is a training pair (SASRec / sequential TFRS retrieval): the
query tower is a CAUSAL `SequenceEncoder` (`causal=True`), which gives one
user vector per position of a right-padded history `[i_0, ..., i_{n-1}, 0, ...]`
in a single pass; the query at position t (the user after `i_0..i_t`) is
paired with the target `i_{t+1}`, for t = 0..n-2 (`next_item_targets`).
Padding positions, the last real position (no next item) and targets that
are not real items (OOV) are no query. A user of n items thus gives n - 1
pairs per epoch, where a single random (prefix, next item) cut gave one.

Losses (`DualEncoderModel.retrieval_terms`, `loss=`), every one a softmax
cross-entropy of each valid query against its next item:

* ``"full_softmax"``: against EVERY real item of the catalog (SASRec+,
  Klenitskiy & Vasilev, RecSys 2023): logits ``[b·L, V]`` from one matmul of
  the queries with the whole candidate table per step, the reserved ids
  (pad, mask, OOV) never a class. Exact, no sampling noise; the cost follows
  the catalog (``b·L·V`` logits per replica), so it is the choice wherever the
  catalog fits (every MovieLens size).
* ``"sampled_softmax"``: against ``num_negatives`` items drawn with replacement
  from the catalog (``negatives="uniform"``, or ``"popularity"``: in proportion
  to ``item_counts``), shared by every query of the global batch, each logit
  corrected by ``- log Q(item)`` (Q the sampling distribution: Jean et al. 2015,
  Yi et al. 2019; for uniform draws the correction is a constant and changes
  nothing), a negative equal to the query's target masked. For catalogs too
  large for the full softmax (gSASRec, Petrov & Macdonald 2023, shows hundreds
  to thousands of negatives come close to it).
* ``"in_batch"``: the paper's dual encoder, described next (kept for the
  claim's small-batch ablation: its negatives scale with the batch).

The in-batch loss is a sampled softmax in the TFRS way.
Every valid query of the batch is scored `q·e / temperature` against its own
target (the positive) and against a SHARED candidate set: the targets at
`num_candidates` positions drawn uniformly without replacement among the
valid positions of the GLOBAL batch (default: as many as the global batch has
users, i.e. the number of in-batch negatives the one-pair-per-user DE had).
A candidate equal to the query's target is masked (accidental hit); with
`logq_correction` every logit is corrected by `- log Q(item)`, Q the item's
share of the valid positions the candidates are drawn from (the exact
sampling distribution of this draw, as `tfrs.tasks.Retrieval`'s
`candidate_sampling_probability`; off in this class as in TFRS, on in
`bt_tf.train`'s default config `--de_logq`, because without it the candidates,
drawn in proportion to popularity, push popular items down and full-catalog
next-item HR suffers). Memory is `[b·L, 1 + C]` logits per
replica (b·L queries, C candidates); the `[B·L, B·L]` matrix of "every
target against every query" is never formed (256 users × 200 positions would
be 51,200² logits). Why sampled positions and not every distinct item: the
cost then follows the batch, not the catalog, and the number of negatives per
query scales with the batch size as in-batch negatives do (the batch-size
ablation's mechanism). The loss is the mean cross-entropy over all valid
(user, position) queries of the global batch.

Batches: `DualEncoderModel` reads `{"items": int [B, L]}` (right-padded
histories, as `bt_tf.data.dataset.make_dataset` gives them); `JointModel`
additionally reads `{"view1", "view2"}` (two augmented views of the full
history, as `BarlowTwinsModel`). Extra keys are ignored.

Both models expose the same API as `BarlowTwinsModel` for probes and export:
`model(items)` is the user embedding `[B, dim]` (the causal encoder's output
at the last real position: exactly the query the training loss would use at
that position), and `model.item_embeddings()` the candidate matrix
`[vocab_size, dim]` whose row `i` scores item id `i` by dot product (rows
`< NUM_RESERVED` are the reserved pad/mask/OOV ids, not items: exclude them
when recommending).

Under `tf.distribute` the candidate positions are drawn from the all-gathered
targets of the GLOBAL batch with a seed every replica shares, so R replicas
give the same loss and update as one device on the same global batch; plain
TFRS uses only each replica's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

import bt_tf  # noqa: F401  (One Keras: sets TF_USE_LEGACY_KERAS before tensorflow)
from bt_tf.distribute import gather_global, num_replicas, replica_context
from bt_tf.features import ITEMS, NUM_RESERVED, PAD_ID, VIEW1, VIEW2
from bt_tf.modeling.losses import barlow_twins_terms

# Pinned so that eager (CPU kernel) and XLA draw the same bits (as bt_tf.data.augment).
_ALG = "philox"
# Stateless-seed step used outside training (evaluate, compute_loss by hand):
# the same batch then always gets the same candidates.
_EVAL_STEP = -1
# Logit of a masked candidate (accidental hit, or a drawn position without a
# target): exp() of it is 0 in float32 after the temperature division.
_MASKED = -1e9
# The DE losses (module docstring) and the catalog draws of the sampled softmax.
LOSSES = ("full_softmax", "sampled_softmax", "in_batch")
NEGATIVE_SAMPLERS = ("uniform", "popularity")


# --------------------------------------------------------------------------
# Training pairs: every position


def next_item_targets(items: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The next-item target of the query at every position of `items`.

    The query at `(b, t)` is the user after `items[b, :t + 1]`; its target is
    `items[b, t + 1]`. It is a valid pair when position t is real and
    `items[b, t + 1]` is a real item (id `>= NUM_RESERVED`): so for a
    right-padded row of n items, t = 0..n-2 (minus positions followed by an
    OOV id). Elementwise ops only: compiles with XLA.

    Args:
        items: int `[B, L]` item ids, right-padded with `PAD_ID`.

    Returns:
        `(targets, valid)`: `targets` int32 `[B, L]` (`PAD_ID` where not
        valid), `valid` bool `[B, L]`.
    """
    items = tf.cast(items, tf.int32)
    following = tf.concat([items[:, 1:], tf.zeros_like(items[:, :1])], axis=1)  # items[t + 1]
    valid = tf.not_equal(items, PAD_ID) & (following >= NUM_RESERVED)
    return tf.where(valid, following, PAD_ID), valid


def drop_last_item(items: tf.Tensor) -> tf.Tensor:
    """`items` `[B, L]` (right-padded) with each row's last real item replaced by padding."""
    items = tf.cast(items, tf.int32)
    lengths = tf.reduce_sum(tf.cast(tf.not_equal(items, PAD_ID), tf.int32), axis=1)
    last = tf.one_hot(lengths - 1, tf.shape(items)[1], on_value=True, off_value=False)
    return tf.where(last, PAD_ID, items)


def sample_candidates(pool: tf.Tensor, num: int | tf.Tensor, seed) -> tuple[tf.Tensor, tf.Tensor]:
    """`num` positions of `pool` drawn uniformly without replacement among its valid ones.

    Args:
        pool: int `[N]` targets (`< NUM_RESERVED` = not a valid position).
        num: candidates to draw; capped at N. When fewer than `num` positions
            are valid, every valid one is drawn and the rest are invalid fillers.
        seed: int `[2]` stateless seed; same seed and pool, same draw.

    Returns:
        `(ids, ok)`: int32 `[min(num, N)]` the drawn targets and bool
        `[min(num, N)]` whether each is a real candidate.
    """
    pool = tf.cast(pool, tf.int32)
    valid = pool >= NUM_RESERVED
    # Random 31-bit keys from raw Philox bits (integer draws are identical in
    # eager and XLA); invalid positions get -1 and so come last.
    bits = tf.random.stateless_uniform(
        tf.shape(pool), seed=seed, minval=None, maxval=None, dtype=tf.int32, alg=_ALG
    )
    keys = tf.where(valid, tf.bitwise.bitwise_and(bits, 0x7FFFFFFF), -1)
    size = pool.shape.num_elements()
    if isinstance(num, int) and size is not None:
        k = min(num, size)  # static: XLA needs a compile-time k
    else:
        k = tf.minimum(num, tf.size(pool))
    _, index = tf.math.top_k(keys, k=k)
    return tf.gather(pool, index), tf.gather(valid, index)


def _popularity_log_q(item_counts, vocab_size: int) -> np.ndarray:
    """`[vocab_size]` log-probabilities of the popularity draw: Q(i) ∝ count(i) + 1 for the
    real items (add-one: an item no training history holds can still be drawn, and its
    logQ stays finite), and never a reserved id (log Q = -inf there)."""
    if item_counts is None:
        raise ValueError('negatives="popularity" needs item_counts (training occurrences per id)')
    counts = np.asarray(item_counts, np.float64).reshape(-1)
    if counts.shape != (vocab_size,) or (counts < 0).any():
        raise ValueError(
            f"item_counts must be [vocab_size={vocab_size}] non-negative counts, got "
            f"shape {counts.shape}"
        )
    weights = counts + 1.0
    weights[:NUM_RESERVED] = 0.0
    with np.errstate(divide="ignore"):
        return np.log(weights / weights.sum()).astype(np.float32)


def _batch(data, extra_keys: Sequence[str] = (), model_name: str = "DualEncoderModel"):
    """Unpacks a batch: a dict with "items" (+ extra keys), or `(dict,)`."""
    if isinstance(data, (tuple, list)):
        data = data[0]
    keys = (ITEMS, *extra_keys)
    if not isinstance(data, dict) or any(k not in data for k in keys):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{model_name} expects batches with keys {list(keys)} ({ITEMS!r}: int [B, L] "
            f"right-padded histories; every position is a next-item pair), got {got}. "
            "Build them with bt_tf.data.dataset.make_dataset"
            + (" and an augment_policy." if extra_keys else ".")
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
        shared_embedding: an existing `[vocab_size, dim]` `Embedding` layer to use as
            the table (tied input and output embeddings: the query encoder's
            `item_embedding`, as SASRec ties them); None = a table of its own.
            A tied table is checkpointed once, under the encoder.

    Call: `tower(ids)` with int ids of any shape `S` → float `S + [dim]`.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        item_genres: np.ndarray | None = None,
        num_genres: int | None = None,
        shared_embedding: tf.keras.layers.Embedding | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.dim = dim
        self.num_genres = num_genres
        if shared_embedding is not None and (
            shared_embedding.input_dim != vocab_size or shared_embedding.output_dim != dim
        ):
            raise ValueError(
                f"shared_embedding is [{shared_embedding.input_dim}, "
                f"{shared_embedding.output_dim}], the tower needs [{vocab_size}, {dim}]."
            )
        self.tied = shared_embedding is not None
        self.embedding = shared_embedding or tf.keras.layers.Embedding(
            vocab_size, dim, name="embedding"
        )
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
        if self.tied:
            raise NotImplementedError("a tied ItemTower is rebuilt with its encoder, not alone")
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
# Sampled softmax over the global batch


class RetrievalTerms(NamedTuple):
    """The DE loss of one step.

    `loss` is the mean sampled-softmax cross-entropy over the valid (user,
    position) queries of the GLOBAL batch (identical on every replica, what
    the metrics report); `replica_share` is this replica's queries' part of it
    (Σ over replicas = `loss`), the quantity to differentiate (see
    `DualEncoderModel`).
    """

    replica_share: tf.Tensor
    loss: tf.Tensor
    queries: tf.Tensor  # [b, L, dim] this replica's per-position user vectors
    targets: tf.Tensor  # [b, L] next item of each position, PAD_ID where no pair
    valid: tf.Tensor  # [b, L] bool, the positions that are queries


class DualEncoderModel(tfrs.Model):
    """TFRS two-tower retrieval: causal `SequenceEncoder` queries, `ItemTower` candidates.

    Trained on every position of every history (module docstring): the query
    at each valid position is scored against its next item and a shared set of
    candidates drawn from the global batch's targets; the loss is the mean
    softmax cross-entropy over all valid queries.

    How the global batch is formed: under `tf.distribute` each replica holds
    b of the B rows. The targets (int ids, `[b, L]`) are all-gathered, and
    every replica draws the same candidate positions from the global `[B, L]`
    targets with the same stateless seed (the optimizer step in training, a
    fixed one in evaluation), so each query sees exactly the candidates it
    sees on one device. Each replica embeds those candidate ids with its copy
    of the item tower; its loss is its queries' cross-entropies summed and
    divided by the global count of valid queries (an all-reduce), so the
    replicas' losses sum to the single-device mean loss and `apply_gradients`,
    which sums the replicas' gradients, applies exactly the single-device
    gradient (no extra division by R, unlike the BT loss, which is already
    global on every replica).

    Args:
        encoder: query tower, a `SequenceEncoder` built with `causal=True`
            (the same class and size as the BT backbone): `encoder(items,
            per_position=True)` `[B, L, dim]`, `encoder(items)` `[B, dim]`.
        item_tower: candidate tower, int ids → `[..., dim]`; default a plain
            `ItemTower(vocab_size, encoder.output_dim)`, or with
            ``tie_embeddings`` one that reads the encoder's input item table.
        vocab_size: item vocabulary size incl. reserved ids; default
            `encoder.vocab_size` (checked against it when both are known).
        temperature: softmax temperature; scores are divided by it.
        loss: ``"in_batch"`` (default here, the paper's DE), ``"full_softmax"``
            or ``"sampled_softmax"`` (module docstring).
        num_negatives: catalog draws per step of ``"sampled_softmax"``.
        negatives: ``"uniform"`` or ``"popularity"`` draws of ``"sampled_softmax"``.
        item_counts: float `[vocab_size]` training occurrences per item id, the
            ``"popularity"`` distribution (reserved ids are never drawn).
        tie_embeddings: the candidate table IS the encoder's input item table
            (SASRec's tied embeddings; only without an explicit ``item_tower``).
        num_candidates: (``"in_batch"``) shared candidates per step, drawn among the
            global batch's valid positions; None = the number of users in the global
            batch (one per user, the negatives of one-pair-per-user in-batch
            softmax).
        remove_accidental_hits: mask a candidate whose item equals the query's
            target (on by default: with every position a query, popular items
            recur in a batch many times).
        logq_correction: (``"in_batch"``) subtract `log Q(item)` from every logit, Q
            the item's share of the valid positions the candidates are drawn from.
        global_negatives: draw candidates from the global batch (default);
            False = each replica from its own rows, as plain TFRS (the update
            then depends on the number of replicas; kept for comparison).
        top_k: ks of `tfrs.metrics.FactorizedTopK` computed in `test_step` only
            (evaluate / validation): for each user, the query at the last
            valid position (the history without its last item) against
            exact retrieval over all real items (ids `>= NUM_RESERVED`) with
            the current towers, reported as
            "factorized_top_k/top_{k}_categorical_accuracy" (= HR@k; history
            items are not excluded). None = off.
        seed: seeds the candidate draws (with the optimizer step).

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
        loss: str = "in_batch",
        num_negatives: int = 1000,
        negatives: str = "uniform",
        item_counts: np.ndarray | None = None,
        tie_embeddings: bool = False,
        num_candidates: int | None = None,
        remove_accidental_hits: bool = True,
        logq_correction: bool = False,
        global_negatives: bool = True,
        top_k: Sequence[int] | None = (10,),
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r} is not one of {LOSSES}.")
        if negatives not in NEGATIVE_SAMPLERS:
            raise ValueError(f"negatives={negatives!r} is not one of {NEGATIVE_SAMPLERS}.")
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}.")
        if tie_embeddings and item_tower is not None:
            raise ValueError("tie_embeddings builds its own item tower: pass no item_tower.")
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
        if num_candidates is not None and num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1 (or None), got {num_candidates}.")
        if not getattr(encoder, "causal", False):
            raise ValueError(
                "The dual encoder trains a query at every position, so its query tower "
                "must be causal: build it with SequenceEncoder(..., causal=True) (a "
                "bidirectional encoder's query at t would see its own target)."
            )
        self.encoder = encoder
        self.vocab_size = vocab_size
        if item_tower is None:
            shared = None
            if tie_embeddings:
                encoder(tf.fill([1, 1], NUM_RESERVED), training=False)  # build its table
                shared = encoder.item_embedding
            item_tower = ItemTower(
                vocab_size, encoder.output_dim, shared_embedding=shared, name="item_tower"
            )
        self.item_tower = item_tower
        self.loss_kind = loss
        self.num_negatives = num_negatives
        self.negatives = negatives
        self.log_q = None  # [V] log of the popularity draw's probabilities
        if loss == "sampled_softmax" and negatives == "popularity":
            self.log_q = tf.constant(_popularity_log_q(item_counts, vocab_size), tf.float32)
        self.temperature = temperature
        self.num_candidates = num_candidates
        self.remove_accidental_hits = remove_accidental_hits
        self.logq_correction = logq_correction
        self.global_negatives = global_negatives
        self.seed = seed
        self.top_k = None
        if top_k:
            self.top_k = tfrs.metrics.FactorizedTopK(
                _LiveCatalog(self._catalog, k=max(top_k)), ks=tuple(top_k)
            )
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")

    # ---- API shared with BarlowTwinsModel (probes, export)

    def call(self, items, training=False):
        """User embedding `[B, dim]` of int items `[B, L]`: the query at the last real position."""
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

    def _sample_seed(self, training: bool) -> tf.Tensor:
        """Candidate-draw seed, identical on every replica: (seed, optimizer step) in training."""
        optimizer = getattr(self, "optimizer", None)
        if training and optimizer is not None:
            step = tf.cast(optimizer.iterations, tf.int64)
        else:
            step = tf.constant(_EVAL_STEP, tf.int64)
        return tf.stack([tf.constant(self.seed, tf.int64), step])

    def retrieval_terms(self, items, training=False, seed=None) -> RetrievalTerms:
        """Softmax cross-entropy of every valid position's query (module and class docstrings).

        Args:
            items: int `[b, L]` right-padded histories (this replica's rows).
            training: passed to the encoder.
            seed: int `[2]` stateless seed of the negatives' draw (``sampled_softmax``,
                ``in_batch``); default `(self.seed, -1)`. Must be the same on every replica.
        """
        items = tf.cast(items, tf.int32)
        inputs = items
        if getattr(self.encoder, "positions", "start") == "end":
            # Right-aligned positions (SASRec's): the last item is only a target, so the
            # last query sits where a user's most recent item sits when it is embedded.
            inputs = drop_last_item(items)
        queries = self.encoder(inputs, training=training, per_position=True)  # [b, L, D]
        targets, valid = next_item_targets(items)
        if seed is None:
            seed = self._sample_seed(training=False)
        dim = tf.shape(queries)[-1]
        q = tf.reshape(queries, [-1, dim])  # [N, D], N = b·L
        pos_ids = tf.reshape(targets, [-1])
        if self.loss_kind == "full_softmax":
            cross_entropy = self._full_softmax(q, pos_ids)
        elif self.loss_kind == "sampled_softmax":
            cross_entropy = self._sampled_softmax(q, pos_ids, seed)
        else:
            cross_entropy = self._in_batch(q, targets, pos_ids, seed)
        weight = tf.cast(tf.reshape(valid, [-1]), tf.float32)
        summed = tf.reduce_sum(cross_entropy * weight)
        # How the global loss is formed: one all-reduce (SUM) of this replica's
        # summed cross-entropy and valid-query count gives the global ones.
        count = tf.reduce_sum(weight)
        total, global_count = summed, count
        ctx = replica_context()
        if ctx is not None:
            total, global_count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [summed, count])
        global_count = tf.stop_gradient(global_count)
        return RetrievalTerms(
            replica_share=tf.math.divide_no_nan(summed, global_count),
            loss=tf.math.divide_no_nan(total, global_count),
            queries=queries,
            targets=targets,
            valid=valid,
        )

    def _full_softmax(self, q: tf.Tensor, pos_ids: tf.Tensor) -> tf.Tensor:
        """`[N]` cross-entropy of each query against every real item (one `[N, V]` matmul).

        Rows without a pair get a real class (weight 0 later) so that no value is huge.
        """
        catalog = self.item_tower(tf.range(self.vocab_size))  # [V, D]
        logits = tf.matmul(q, catalog, transpose_b=True) / self.temperature  # [N, V]
        reserved = tf.cast(tf.range(self.vocab_size) < NUM_RESERVED, logits.dtype) * _MASKED
        labels = tf.maximum(pos_ids, NUM_RESERVED)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=logits + reserved[tf.newaxis, :]
        )

    def _sampled_softmax(self, q: tf.Tensor, pos_ids: tf.Tensor, seed) -> tf.Tensor:
        """`[N]` cross-entropy against ``num_negatives`` catalog draws shared by every query
        (the same draw on every replica: same seed), logQ-corrected, accidental hits masked."""
        cand_ids = self.draw_negatives(seed)
        positive = tf.reduce_sum(q * self.item_tower(pos_ids), axis=-1) / self.temperature
        negative = tf.matmul(q, self.item_tower(cand_ids), transpose_b=True) / self.temperature
        if self.log_q is not None:
            positive -= tf.gather(self.log_q, tf.maximum(pos_ids, NUM_RESERVED))
            negative -= tf.gather(self.log_q, cand_ids)[tf.newaxis, :]
        return self._softmax_terms(positive, negative, cand_ids, pos_ids)

    def draw_negatives(self, seed) -> tf.Tensor:
        """int32 `[num_negatives]` catalog ids of a sampled-softmax step, drawn with
        replacement: uniformly over the real items, or by `negatives="popularity"`'s Q."""
        k = self.num_negatives
        if self.log_q is None:  # uniform over the real items: log Q is one constant
            return tf.random.stateless_uniform(
                [k], seed=seed, minval=NUM_RESERVED, maxval=self.vocab_size, dtype=tf.int32,
                alg=_ALG,
            )  # fmt: skip
        return tf.random.stateless_categorical(
            self.log_q[tf.newaxis, :], k, seed=seed, dtype=tf.int32
        )[0]

    def _softmax_terms(self, positive, negative, cand_ids, pos_ids, cand_ok=None) -> tf.Tensor:
        """`[N]` cross-entropy of `positive` `[N]` among itself and `negative` `[N, C]`."""
        keep = tf.ones_like(negative, tf.bool)
        if cand_ok is not None:
            keep &= cand_ok[tf.newaxis, :]
        if self.remove_accidental_hits:
            keep &= tf.not_equal(cand_ids[tf.newaxis, :], pos_ids[:, tf.newaxis])
        negative = tf.where(keep, negative, _MASKED)
        logits = tf.concat([positive[:, tf.newaxis], negative], axis=1)  # [N, 1 + C]
        return tf.reduce_logsumexp(logits, axis=1) - positive

    def _in_batch(self, q: tf.Tensor, targets: tf.Tensor, pos_ids: tf.Tensor, seed) -> tf.Tensor:
        """`[N]` cross-entropy against candidates drawn from the global batch's targets."""
        ctx = replica_context()
        pool = targets
        if ctx is not None and self.global_negatives:
            pool = gather_global(ctx, targets)
        num = self.num_candidates
        if num is None:  # one per user of the global batch
            num = pool.shape[0] if pool.shape[0] is not None else tf.shape(pool)[0]
        flat_pool = tf.reshape(pool, [-1])
        cand_ids, cand_ok = sample_candidates(flat_pool, num, seed)
        positive = tf.reduce_sum(q * self.item_tower(pos_ids), axis=-1) / self.temperature  # [N]
        negative = tf.matmul(q, self.item_tower(cand_ids), transpose_b=True) / self.temperature
        if self.logq_correction:
            # Q(item) = the item's share of the pool's valid positions: each
            # position is drawn with the same probability.
            counts = tf.math.unsorted_segment_sum(
                tf.cast(flat_pool >= NUM_RESERVED, tf.float32), flat_pool, self.vocab_size
            )
            log_q = tf.math.log(tf.maximum(counts, 1.0) / tf.maximum(tf.reduce_sum(counts), 1.0))
            positive -= tf.gather(log_q, pos_ids)
            negative -= tf.gather(log_q, cand_ids)[tf.newaxis, :]
        return self._softmax_terms(positive, negative, cand_ids, pos_ids, cand_ok)

    def _objective(self, inputs, training: bool) -> tuple[tf.Tensor, RetrievalTerms]:
        """(this replica's share of the loss, the DE terms); updates the loss trackers."""
        data = _batch(inputs)
        terms = self.retrieval_terms(
            data[ITEMS], training=training, seed=self._sample_seed(training)
        )
        self.loss_tracker.update_state(terms.loss)
        return terms.replica_share, terms

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        """This replica's share of the loss (Σ over replicas = the global mean loss).

        Also updates the loss trackers with the global-batch values. `inputs`:
        `{"items": int [b, L]}` (JointModel: + views).
        """
        return self._objective(inputs, training)[0]

    def _regularization_share(self):
        # Every replica adds the full regularization loss; apply_gradients sums
        # the R replicas' gradients, hence the division by R.
        if not self.losses:
            return 0.0
        return tf.add_n(self.losses) / num_replicas()

    def train_step(self, data):
        with tf.GradientTape() as tape:
            # The share is already scaled for the replica sum (class docstring).
            share = self.compute_loss(data, training=True) + self._regularization_share()
        self.optimizer.minimize(share, self.trainable_variables, tape=tape)
        return {m.name: m.result() for m in self._train_trackers}

    def test_step(self, data):
        _, terms = self._objective(data, training=False)
        if self.top_k is not None:
            # One query per user: the last valid position (its target is the
            # history's last item), as the one-pair-per-user DE measured.
            width = tf.shape(terms.valid)[1]
            position = tf.reduce_max(
                tf.where(terms.valid, tf.range(width)[tf.newaxis, :], -1), axis=1
            )
            has_pair = position >= 0
            position = tf.maximum(position, 0)
            query = tf.gather(terms.queries, position, axis=1, batch_dims=1)
            target = tf.gather(terms.targets, position, axis=1, batch_dims=1)
            self.top_k.update_state(
                query,
                self.item_tower(target),
                true_candidate_ids=target,
                sample_weight=tf.cast(has_pair, tf.float32),
            )
        return {m.name: m.result() for m in self.metrics}


class JointModel(DualEncoderModel):
    """One encoder trained with `DE loss + bt_weight × Barlow Twins loss` (`--model=bt+de`).

    The DE part is `DualEncoderModel`'s (every position a next-item query,
    candidates from the global batch); the BT part is `BarlowTwinsModel`'s
    (`bt_tf.modeling.losses` `barlow_twins_terms` on the projected views, global-batch
    statistics). The shared encoder is causal (the DE needs it); the BT part
    sees its user vector, the output at the last real position of each view.
    Batches: `{"items", "view1", "view2": int [B, L]}`.

    Args:
        encoder: the shared causal `SequenceEncoder` (query tower and BT backbone).
        projector: BT projector, `bt_tf.modeling.encoders.build_projector(...)`.
        bt_weight: weight of the BT loss; 0 gives exactly the DE loss and update.
        lambd: BT off-diagonal weight.
        eps: BT standardization epsilon.
        item_tower, vocab_size, temperature, num_candidates,
        remove_accidental_hits, logq_correction, global_negatives, top_k, seed:
        as in `DualEncoderModel`.

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
        data = _batch(inputs, (VIEW1, VIEW2), model_name="JointModel")
        de = self.retrieval_terms(data[ITEMS], training=training, seed=self._sample_seed(training))
        z1 = self.project(data[VIEW1], training=training)
        z2 = self.project(data[VIEW2], training=training)
        bt = barlow_twins_terms(z1, z2, eps=self.eps)
        bt_loss = bt.on_diag + self.lambd * bt.off_diag
        # Gradient scaling: `de.replica_share` already sums to the DE loss over
        # replicas, while `bt_loss` is the global BT loss on EVERY replica
        # (all-reduced statistics), so only the BT part is divided by R here;
        # apply_gradients then sums the replicas' gradients to d(total)/dθ.
        share = de.replica_share + self.bt_weight * bt_loss / num_replicas()
        total = de.loss + self.bt_weight * bt_loss
        self.loss_tracker.update_state(total)
        self.de_loss_tracker.update_state(de.loss)
        self.bt_loss_tracker.update_state(bt_loss)
        return share, de

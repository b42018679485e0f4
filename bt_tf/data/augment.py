"""Sequence augmentations for Barlow Twins views, as vectorized stateless TF ops.

Every op takes a right-padded batch ``items: int[batch, max_len]`` (``PAD_ID``
after the last real item, real items ``>= NUM_RESERVED``) and returns a batch of
the same shape and dtype. Row lengths are ``count(items != PAD_ID)`` unless
passed explicitly. All randomness comes from ``tf.random.stateless_*`` ops
(Philox bits, converted to floats here so eager and XLA agree bit for bit)
keyed by an explicit ``seed: int[2]``, so the same seed gives the same views
on any run. There is no per-example Python: every op compiles under
``tf.function(jit_compile=True)``.

Invariants shared by all ops:

* padding is never augmented in: rows stay right-padded, no real position
  becomes ``PAD_ID``, and no padding becomes an item (only ``crop`` shortens a
  row, the dropped tail being padding again, and only ``insert`` lengthens
  one, by shifting its real items right);
* rows of length 0 or 1 pass through unchanged.

The ops (the paper's masking and reordering, cropping as in CL4SRec, and
substitution/insertion of correlated items as in CoSeRec):

* ``mask(items, seed, gamma)``: each real item becomes ``MASK_ID`` w.p. ``gamma``.
* ``reorder(items, seed, beta)``: one contiguous span of ``floor(beta * len)``
  items, starting uniformly among the valid starts, is randomly permuted.
* ``crop(items, seed, eta)``: a contiguous window of ``max(1, floor(eta * len))``
  items, starting uniformly among the valid starts, moved to position 0.
* ``substitute(items, seed, rho, table)``: ``floor(rho * len)`` real items, at
  positions chosen uniformly without replacement, each replaced by an item
  drawn uniformly from its row of the co-occurrence ``table``.
* ``insert(items, seed, rho, table)``: before each of ``floor(rho * len)``
  items (positions chosen as for substitute), a correlated item drawn the same
  way is inserted. The row grows to ``len + floor(rho * len)``; when that
  exceeds ``max_len`` the OLDEST items are dropped (the batch keeps the most
  recent ``max_len`` items, as `bt_tf.data.dataset` does), and the row stays
  right-padded.

The co-occurrence table (`cooccurrence_table`, built once in numpy from the
train histories) is ``int[vocab, k]``: row ``i`` holds ``i``'s most frequent
neighbours (items within ``window`` positions of ``i`` in a history), most
frequent first, then ``i`` itself in the remaining slots. An item without
neighbours (and every reserved id) maps to itself only, so substitution leaves
it unchanged and insertion duplicates it; reserved ids are never produced.

``floor(x * len)`` is computed in float64, so it equals Python's
``math.floor(x * len)`` exactly.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from bt_tf.features import MASK_ID, NUM_RESERVED, PAD_ID

# Pinned so that eager (CPU kernel) and XLA give identical random numbers.
_ALG = "philox"

# Randomness layout. Each op consumes one block ``u: float64[batch, max_len + 2]``
# of U[0, 1) numbers: ``u[:, :max_len]`` per position (mask draws, reorder sort
# keys, substitute/insert position choice), ``u[:, max_len]`` the per-row
# start, ``u[:, max_len + 1]`` the per-row apply decision. Substitute and
# insert also take a second block, whose ``[:, :max_len]`` picks the correlated
# item per position: they receive ``concat([op block, pick block], axis=1)``.
# The pick blocks come after the op blocks of a view (``[num_ops + t]`` for the
# t-th of them), so policies without these ops draw exactly what they drew
# before the ops existed. `augment` and `two_views` draw all blocks of all
# views with ONE Philox call: every random op costs about a second of XLA
# compile time, so fewer, bigger draws keep `jit_compile=True` compilation fast.
_EXTRA_COLUMNS = 2

# The fixed order `augment` applies the ops in (see `AugmentPolicy`).
OP_ORDER = ("crop", "insert", "substitute", "reorder", "mask")
_TABLE_OPS = ("substitute", "insert")  # ops that read the co-occurrence table
_FLAG_ORDER = ("mask", "reorder", "crop", "substitute", "insert")  # `to_string`

# Defaults of the co-occurrence table (`cooccurrence_table`).
COOCCURRENCE_TOP_K = 10
COOCCURRENCE_WINDOW = 3


def _as_seed(seed) -> tf.Tensor:
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        raise TypeError(f"seed must be an int32/int64 tensor of shape [2], got {seed.dtype}.")
    seed.shape.assert_is_compatible_with([2])
    return tf.cast(seed, tf.int64)


def _uniform(shape, seed: tf.Tensor) -> tf.Tensor:
    """U[0, 1) float64 numbers built from raw Philox bits.

    `tf.random.stateless_uniform` with a float dtype gives different numbers
    eagerly and under XLA (different bits-to-float conversion), while the raw
    integer bits agree, so the conversion is done here: the top 53 bits of a
    uint64, scaled by 2^-53 (exact in float64).
    """
    bits = tf.random.stateless_uniform(
        shape, seed=seed, minval=None, maxval=None, dtype=tf.uint64, alg=_ALG
    )
    return tf.cast(tf.bitwise.right_shift(bits, 11), tf.float64) * (2.0**-53)


def _draw(items: tf.Tensor, seed, leading=()) -> tf.Tensor:
    """Random blocks for ``items``: ``float64[*leading, batch, max_len + 2]``."""
    batch_and_width = tf.shape(items) + tf.constant([0, _EXTRA_COLUMNS])
    shape = tf.concat([tf.constant(leading, tf.int32, shape=[len(leading)]), batch_and_width], 0)
    return _uniform(shape, _as_seed(seed))


def sequence_lengths(items: tf.Tensor) -> tf.Tensor:
    """Number of real (non-padding) items per row: ``int32[batch]``."""
    return tf.reduce_sum(tf.cast(tf.not_equal(items, PAD_ID), tf.int32), axis=1)


def _lengths_or_derive(items: tf.Tensor, lengths) -> tf.Tensor:
    if lengths is None:
        return sequence_lengths(items)
    return tf.cast(lengths, tf.int32)


def _as_float64(value) -> tf.Tensor:
    if isinstance(value, (int, float)):
        return tf.constant(value, tf.float64)  # not via float32
    return tf.cast(value, tf.float64)


def _floor_fraction(fraction, lengths: tf.Tensor) -> tf.Tensor:
    """``floor(fraction * lengths)`` in float64 (exactly as Python computes it)."""
    return tf.cast(tf.floor(_as_float64(fraction) * tf.cast(lengths, tf.float64)), tf.int32)


def _uniform_start(num_starts: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """Per row, an int uniform in ``[0, num_starts)`` (0 when ``num_starts <= 1``)."""
    start = tf.cast(tf.floor(u * tf.cast(num_starts, tf.float64)), tf.int32)
    return tf.clip_by_value(start, 0, tf.maximum(num_starts - 1, 0))


def mask(items: tf.Tensor, seed, gamma, lengths=None) -> tf.Tensor:
    """Replace each real item by ``MASK_ID`` independently with probability ``gamma``.

    Args:
      items: ``int[batch, max_len]``, right-padded with ``PAD_ID``.
      seed: ``int[2]`` stateless seed.
      gamma: masking probability in ``[0, 1]`` (float or scalar tensor).
      lengths: optional ``int[batch]`` real lengths (default: derived from padding).

    Returns:
      ``int[batch, max_len]``, same dtype. Padding and rows of length <= 1 unchanged.
    """
    return _mask(items, _draw(items, seed), gamma, lengths)


def _mask(items: tf.Tensor, u: tf.Tensor, gamma, lengths=None) -> tf.Tensor:
    lengths = _lengths_or_derive(items, lengths)
    max_len = tf.shape(items)[1]
    real = tf.sequence_mask(lengths, max_len) & (lengths > 1)[:, None]
    hit = real & (u[:, :max_len] < _as_float64(gamma))
    return tf.where(hit, tf.cast(MASK_ID, items.dtype), items)


def _reorder_with_span(items: tf.Tensor, seed, beta, lengths=None):
    """`reorder`, also returning the shuffled span per row: ``(out, start, span)``."""
    return _reorder(items, _draw(items, seed), beta, lengths)


def _reorder(items: tf.Tensor, u: tf.Tensor, beta, lengths=None):
    lengths = _lengths_or_derive(items, lengths)
    max_len = tf.shape(items)[1]
    span = tf.where(lengths > 1, _floor_fraction(beta, lengths), 0)
    start = _uniform_start(lengths - span + 1, u[:, max_len])
    # Sort keys: position i outside the span keeps key i; inside the span the
    # key is start + u * span with u ~ U[0, 1). Keys left of the span are
    # <= start - 1, keys right of it >= start + span, so argsort permutes the
    # span uniformly at random and leaves every other position in place.
    pos = tf.range(max_len, dtype=tf.int32)[None, :]
    inside = (pos >= start[:, None]) & (pos < (start + span)[:, None])
    u = u[:, :max_len]
    pos_f = tf.cast(pos, tf.float64)
    span_keys = tf.cast(start, tf.float64)[:, None] + u * tf.cast(span, tf.float64)[:, None]
    keys = tf.where(inside, span_keys, tf.broadcast_to(pos_f, tf.shape(u)))
    perm = tf.argsort(keys, axis=1, stable=True)
    out = tf.gather(items, perm, axis=1, batch_dims=1)
    return out, start, span


def reorder(items: tf.Tensor, seed, beta, lengths=None) -> tf.Tensor:
    """Randomly permute one contiguous span of ``floor(beta * len)`` items per row.

    The span start is uniform over ``[0, len - span]``; items outside the span
    and all padding stay where they are, so each row keeps its multiset.

    Args:
      items: ``int[batch, max_len]``, right-padded with ``PAD_ID``.
      seed: ``int[2]`` stateless seed.
      beta: span fraction in ``[0, 1]``.
      lengths: optional ``int[batch]`` real lengths.

    Returns:
      ``int[batch, max_len]``, same dtype.
    """
    return _reorder_with_span(items, seed, beta, lengths)[0]


def _crop_with_window(items: tf.Tensor, seed, eta, lengths=None):
    """`crop`, also returning the kept window per row: ``(out, start, size)``."""
    return _crop(items, _draw(items, seed), eta, lengths)


def _crop(items: tf.Tensor, u: tf.Tensor, eta, lengths=None):
    lengths = _lengths_or_derive(items, lengths)
    max_len = tf.shape(items)[1]
    size = tf.minimum(tf.maximum(_floor_fraction(eta, lengths), 1), lengths)
    start = _uniform_start(lengths - size + 1, u[:, max_len])
    pos = tf.range(max_len, dtype=tf.int32)[None, :]
    src = tf.minimum(pos + start[:, None], max_len - 1)
    shifted = tf.gather(items, src, axis=1, batch_dims=1)
    out = tf.where(pos < size[:, None], shifted, tf.cast(PAD_ID, items.dtype))
    return out, start, size


def crop(items: tf.Tensor, seed, eta, lengths=None) -> tf.Tensor:
    """Keep a random contiguous window of ``max(1, floor(eta * len))`` items per row.

    The window start is uniform over ``[0, len - size]``; the window is moved to
    position 0 and the rest of the row is ``PAD_ID``.

    Args:
      items: ``int[batch, max_len]``, right-padded with ``PAD_ID``.
      seed: ``int[2]`` stateless seed.
      eta: kept fraction in ``(0, 1]``.
      lengths: optional ``int[batch]`` real lengths.

    Returns:
      ``int[batch, max_len]``, same dtype; new length ``max(1, floor(eta*len))``
      (0 for empty rows).
    """
    return _crop_with_window(items, seed, eta, lengths)[0]


def _choose_positions(u: tf.Tensor, lengths: tf.Tensor, fraction) -> tf.Tensor:
    """Per row, ``floor(fraction * len)`` of the real positions (none if ``len <= 1``),
    uniformly without replacement: ``bool[batch, max_len]``.

    The chosen positions are those whose key ``u`` is among the row's
    ``count`` smallest (at most the ``count``-th smallest; keys are distinct
    53-bit numbers); padding gets key 2 (> any U[0, 1) number).
    """
    max_len = tf.shape(u)[1]
    count = tf.where(lengths > 1, _floor_fraction(fraction, lengths), 0)
    real = tf.sequence_mask(lengths, max_len)
    keys = tf.where(real, u, tf.constant(2.0, tf.float64))
    threshold = tf.gather(tf.sort(keys, axis=1), tf.maximum(count - 1, 0)[:, None], batch_dims=1)
    return real & (keys <= threshold) & (count > 0)[:, None]


def _correlated(items: tf.Tensor, u: tf.Tensor, table: tf.Tensor) -> tf.Tensor:
    """Per position, an item drawn uniformly from the item's neighbours in ``table``.

    ``u: float64[batch, max_len]`` picks the neighbour. A row of ``table`` lists
    the neighbours first, then the item itself; only the ``n`` entries that
    differ from the item are candidates, so the pick is uniform over them.
    Items without neighbours (and ids outside the table) are returned as is.
    """
    table = tf.cast(table, tf.int32)
    vocab, k = tf.shape(table)[0], tf.shape(table)[1]
    # Neighbours per item (a constant of the graph when the table is one).
    num_neighbours = tf.reduce_sum(
        tf.cast(tf.not_equal(table, tf.range(vocab)[:, None]), tf.int32), axis=1
    )
    in_table = (items >= 0) & (items < tf.cast(vocab, items.dtype))
    ids = tf.cast(tf.where(in_table, items, tf.zeros_like(items)), tf.int32)
    n = tf.gather(num_neighbours, ids)
    j = tf.cast(tf.floor(u * tf.cast(n, tf.float64)), tf.int32)
    j = tf.clip_by_value(j, 0, tf.maximum(n - 1, 0))
    picked = tf.cast(tf.gather(tf.reshape(table, [-1]), ids * k + j), items.dtype)
    return tf.where(in_table & (n > 0), picked, items)


def _pick_block(u: tf.Tensor, max_len) -> tf.Tensor:
    """The pick block's per-position columns of a table op's ``concat`` input."""
    return u[:, max_len + _EXTRA_COLUMNS : 2 * max_len + _EXTRA_COLUMNS]


def _draw_with_picks(items: tf.Tensor, seed) -> tf.Tensor:
    """Op block and pick block of a single table op, side by side."""
    u = _draw(items, seed, [2])
    return tf.concat([u[0], u[1]], axis=1)


def _substitute(items: tf.Tensor, u: tf.Tensor, rho, lengths=None, table=None) -> tf.Tensor:
    lengths = _lengths_or_derive(items, lengths)
    max_len = tf.shape(items)[1]
    chosen = _choose_positions(u[:, :max_len], lengths, rho)
    replacement = _correlated(items, _pick_block(u, max_len), table)
    return tf.where(chosen, replacement, items)


def substitute(items: tf.Tensor, seed, rho, table, lengths=None) -> tf.Tensor:
    """Replace ``floor(rho * len)`` real items per row by correlated items (CoSeRec).

    The positions are uniform without replacement; each chosen item ``i``
    becomes an item drawn uniformly from ``i``'s neighbours in ``table`` (an
    item without neighbours stays as it is). Lengths never change.

    Args:
      items: ``int[batch, max_len]``, right-padded with ``PAD_ID``.
      seed: ``int[2]`` stateless seed.
      rho: fraction of the real items substituted, in ``[0, 1]``.
      table: ``int[vocab, k]`` co-occurrence table (see `cooccurrence_table`).
      lengths: optional ``int[batch]`` real lengths.

    Returns:
      ``int[batch, max_len]``, same dtype.
    """
    return _substitute(items, _draw_with_picks(items, seed), rho, lengths, table)


def _insert(items: tf.Tensor, u: tf.Tensor, rho, lengths=None, table=None) -> tf.Tensor:
    if PAD_ID != 0:  # the scatter-by-sum below leaves untouched slots at 0
        raise NotImplementedError("insert assumes PAD_ID == 0")
    lengths = _lengths_or_derive(items, lengths)
    batch, max_len = tf.shape(items)[0], tf.shape(items)[1]
    chosen = _choose_positions(u[:, :max_len], lengths, rho)
    inserted = _correlated(items, _pick_block(u, max_len), table)
    # Item i moves right by the number of insertions at or before it (each one
    # goes just before its chosen item); the whole row then moves left by the
    # overflow, dropping the oldest items when it no longer fits.
    before = tf.cumsum(tf.cast(chosen, tf.int32), axis=1)
    overflow = tf.maximum(lengths + before[:, -1] - max_len, 0)
    pos = tf.range(max_len, dtype=tf.int32)[None, :]
    target = pos + before - overflow[:, None]
    real = tf.sequence_mask(lengths, max_len)
    keep_item = real & (target >= 0)
    keep_inserted = chosen & (target - 1 >= 0)
    # Scatter both into row-major slots; dropped ones go to an extra dump slot.
    row_base = (tf.range(batch, dtype=tf.int32) * max_len)[:, None]
    dump = batch * max_len
    slot_item = tf.where(keep_item, row_base + target, dump)
    slot_inserted = tf.where(keep_inserted, row_base + target - 1, dump)
    values = tf.concat([tf.reshape(items, [-1]), tf.reshape(inserted, [-1])], 0)
    slots = tf.concat([tf.reshape(slot_item, [-1]), tf.reshape(slot_inserted, [-1])], 0)
    # Every kept slot receives exactly one value, so the sum is a placement.
    out = tf.math.unsorted_segment_sum(values, slots, dump + 1)[:dump]
    return tf.reshape(out, [batch, max_len])


def insert(items: tf.Tensor, seed, rho, table, lengths=None) -> tf.Tensor:
    """Insert a correlated item before each of ``floor(rho * len)`` items per row (CoSeRec).

    The positions are uniform without replacement; before each chosen item
    ``i`` goes an item drawn uniformly from ``i``'s neighbours in ``table``
    (``i`` itself when it has none). The original items keep their order. The
    new length is ``min(len + floor(rho * len), max_len)``: on overflow the
    oldest items are dropped, so the row ends with its most recent items, and
    it stays right-padded.

    Args:
      items: ``int[batch, max_len]``, right-padded with ``PAD_ID``.
      seed: ``int[2]`` stateless seed.
      rho: fraction of the real items that get an insertion, in ``[0, 1]``.
      table: ``int[vocab, k]`` co-occurrence table (see `cooccurrence_table`).
      lengths: optional ``int[batch]`` real lengths.

    Returns:
      ``int[batch, max_len]``, same dtype.
    """
    return _insert(items, _draw_with_picks(items, seed), rho, lengths, table)


def cooccurrence_table(
    values,
    row_lengths,
    vocab_size: int,
    top_k: int = COOCCURRENCE_TOP_K,
    window: int = COOCCURRENCE_WINDOW,
) -> np.ndarray:
    """Each item's ``top_k`` most frequent neighbours in a set of sequences (numpy).

    Two items are neighbours each time they occur within ``window`` positions
    of each other in the same sequence (``1 <= |i - j| <= window``); counts are
    symmetric. Pairs of equal items and pairs with a reserved id
    (``< NUM_RESERVED``) are not counted.

    Args:
      values: the concatenated sequences, ids in ``[0, vocab_size)``.
      row_lengths: length of each sequence (``sum == len(values)``).
      vocab_size: number of item ids (table rows).
      top_k: neighbours kept per item (table columns).
      window: neighbourhood half-width in positions.

    Returns:
      ``int32[vocab_size, top_k]``: row ``i`` lists ``i``'s neighbours by
      decreasing count (ties: smaller id first), then ``i`` itself in the
      slots left; rows of reserved ids and of items without neighbours are
      all ``i``. Built by sorting packed int64 pair keys: ``O(P log P)`` for
      ``P <= window * len(values)`` pairs, no Python loop over sequences.
    """
    if top_k < 1 or window < 1:
        raise ValueError(f"top_k ({top_k}) and window ({window}) must be >= 1.")
    values = np.asarray(values)
    row_lengths = np.asarray(row_lengths, np.int64)
    if values.ndim != 1 or row_lengths.ndim != 1:
        raise ValueError("values and row_lengths must be 1-D (concatenated sequences).")
    if (row_lengths < 0).any() or row_lengths.sum() != values.size:
        raise ValueError(
            f"row_lengths (sum {row_lengths.sum()}) must be >= 0 and sum to "
            f"len(values) = {values.size}."
        )
    bad = np.flatnonzero((values < 0) | (values >= vocab_size))
    if bad.size:
        raise ValueError(
            f"Item id {values[bad[0]]} at flat position {bad[0]} is outside the "
            f"vocabulary [0, {vocab_size})."
        )
    values = values.astype(np.int64)
    table = np.repeat(np.arange(vocab_size, dtype=np.int32)[:, None], top_k, axis=1)
    lo, hi, counts = _pair_counts(values, row_lengths, vocab_size, window)
    if not counts.size:
        return table
    rows, cols = _top_neighbours(lo, hi, counts, vocab_size)
    starts = np.searchsorted(rows, np.arange(vocab_size))
    rank = np.arange(rows.size) - starts[rows]
    keep = rank < top_k
    table[rows[keep], rank[keep]] = cols[keep]
    return table


def _pair_counts(values: np.ndarray, row_lengths: np.ndarray, vocab_size: int, window: int):
    """Distinct unordered pairs ``lo < hi`` within ``window`` and their counts."""
    ends = np.cumsum(row_lengths)
    # Position of each value inside its sequence: pairs (i - d, i) are in the
    # same sequence iff position[i] >= d.
    position = np.arange(values.size) - np.repeat(ends - row_lengths, row_lengths)
    real = values >= NUM_RESERVED
    parts = []
    for d in range(1, window + 1):
        a, b = values[:-d], values[d:]
        ok = (position[d:] >= d) & real[:-d] & real[d:] & (a != b)
        a, b = a[ok], b[ok]
        parts.append(np.minimum(a, b) * vocab_size + np.maximum(a, b))
    keys = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    del parts
    keys.sort()
    if not keys.size:
        return keys, keys, keys
    first = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    counts = np.diff(np.append(first, keys.size))
    keys = keys[first]
    return keys // vocab_size, keys % vocab_size, counts


def _top_neighbours(lo, hi, counts, vocab_size: int):
    """Both directions of each pair, sorted by (row, count desc, col): ``(rows, cols)``."""
    max_count = int(counts.max())
    col_bits = int(vocab_size - 1).bit_length()
    count_bits = max_count.bit_length()
    n = lo.size
    if 2 * col_bits + count_bits <= 63:
        # One int64 key per entry, (row | max_count - count | col): a plain sort
        # (much faster than argsort/lexsort) gives the order, and the key decodes.
        shift = col_bits + count_bits
        inverse = (max_count - counts) << col_bits
        packed = np.empty(2 * n, np.int64)
        packed[:n] = (lo << shift) | inverse | hi
        packed[n:] = (hi << shift) | inverse | lo
        del inverse
        packed.sort()
        return packed >> shift, packed & ((1 << col_bits) - 1)
    rows, cols = np.concatenate([lo, hi]), np.concatenate([hi, lo])
    order = np.lexsort((cols, -np.concatenate([counts, counts]), rows))
    return rows[order], cols[order]


# name -> op on a random block: (items, u, strength, lengths, table) -> items
_OPS = {
    "crop": lambda x, u, eta, n, table: _crop(x, u, eta, n)[0],
    "insert": _insert,
    "substitute": _substitute,
    "reorder": lambda x, u, beta, n, table: _reorder(x, u, beta, n)[0],
    "mask": lambda x, u, gamma, n, table: _mask(x, u, gamma, n),
}
_RANGES = {  # name -> (low, high, low inclusive)
    "mask": (0.0, 1.0, True),
    "reorder": (0.0, 1.0, True),
    "crop": (0.0, 1.0, False),
    "substitute": (0.0, 1.0, True),
    "insert": (0.0, 1.0, True),
    "apply_prob": (0.0, 1.0, True),
}


@dataclasses.dataclass(frozen=True)
class AugmentPolicy:
    """Which augmentations make a view, and how strong each is.

    Each strength is ``None`` when the op is not used. ``augment`` applies the
    used ops in the fixed order crop -> insert -> substitute -> reorder -> mask
    (`OP_ORDER`): crop first so that every later fraction refers to the
    cropped length; insert before substitute so that both the substitute and
    the reorder fractions refer to the final length (an inserted item may
    itself be substituted); mask last so masked positions are the ones the
    encoder sees. Each used op is applied to each row independently with
    probability ``apply_prob``; the default 1.0 always applies all of them
    (the paper's mask+reorder composition), 0.5 gives the "random
    composition" where a view may get any subset.

    Attributes:
      mask: gamma, probability that a real item is replaced by ``MASK_ID``.
      reorder: beta, fraction of the sequence in the permuted span.
      crop: eta, fraction of the sequence kept.
      substitute: rho, fraction of the items replaced by a correlated item.
      insert: rho, fraction of the items that get a correlated item inserted
        before them.
      apply_prob: per-row probability that each used op is applied.

    ``substitute`` and ``insert`` need a co-occurrence table
    (`needs_cooccurrence`); `bt_tf.data.dataset.make_dataset` builds it from the
    train split.
    """

    mask: float | None = None
    reorder: float | None = None
    crop: float | None = None
    substitute: float | None = None
    insert: float | None = None
    apply_prob: float = 1.0

    def __post_init__(self):
        for name in _RANGES:
            value = getattr(self, name)
            if value is None and name != "apply_prob":
                continue
            _check_value(name, value)

    @classmethod
    def from_string(cls, spec: str | None) -> AugmentPolicy:
        """Parse ``"mask:0.3,reorder:0.3"``, ``"crop:0.6,apply_prob:0.5"``, ...

        Names: ``mask``, ``reorder``, ``crop``, ``substitute``, ``insert``,
        ``apply_prob``; each at most once, in any order. ``None``, ``""`` and
        ``"none"`` give the identity policy.
        """
        if spec is None or spec.strip().lower() in ("", "none"):
            return cls()
        values: dict[str, float] = {}
        for part in spec.split(","):
            part = part.strip()
            name, sep, raw = part.partition(":")
            name = name.strip().lower()
            if not sep or not raw.strip():
                raise ValueError(
                    f"Augmentation policy {spec!r}: entry {part!r} must look like "
                    f"'name:value', e.g. 'mask:0.3,reorder:0.3'."
                )
            if name not in _RANGES:
                raise ValueError(
                    f"Augmentation policy {spec!r}: unknown name {name!r}; "
                    f"use any of {sorted(_RANGES)}."
                )
            if name in values:
                raise ValueError(f"Augmentation policy {spec!r}: {name!r} is given twice.")
            try:
                values[name] = float(raw)
            except ValueError:
                raise ValueError(
                    f"Augmentation policy {spec!r}: value {raw.strip()!r} of {name!r} "
                    "is not a number."
                ) from None
        return cls(**values)

    def to_string(self) -> str:
        """Inverse of `from_string` (``"none"`` for the identity policy).

        The ops come in the order of the ``--augment`` help (mask, reorder, crop,
        substitute, insert), so that the usual spellings round-trip unchanged.
        """
        parts = [f"{n}:{getattr(self, n):g}" for n in _FLAG_ORDER if getattr(self, n) is not None]
        if not parts:
            return "none"
        if self.apply_prob != 1.0:
            parts.append(f"apply_prob:{self.apply_prob:g}")
        return ",".join(parts)

    @property
    def ops(self) -> tuple[tuple[str, float], ...]:
        """The used ops with their strengths, in application order."""
        return tuple((n, getattr(self, n)) for n in OP_ORDER if getattr(self, n) is not None)

    @property
    def is_identity(self) -> bool:
        return not self.ops

    @property
    def needs_cooccurrence(self) -> bool:
        """Whether an op reads the co-occurrence table (substitute, insert)."""
        return any(name in _TABLE_OPS for name, _ in self.ops)

    @property
    def num_blocks(self) -> int:
        """Random blocks one view draws: one per op, plus a pick block per table op."""
        return len(self.ops) + sum(name in _TABLE_OPS for name, _ in self.ops)


def _check_value(name: str, value) -> None:
    low, high, low_inclusive = _RANGES[name]
    ok = isinstance(value, (int, float)) and (
        (low <= value if low_inclusive else low < value) and value <= high
    )
    if not ok:
        bracket = "[" if low_inclusive else "("
        raise ValueError(
            f"Augmentation strength {name}={value!r} is out of range; "
            f"it must be a number in {bracket}{low:g}, {high:g}]."
        )


def _check_table(policy: AugmentPolicy, table):
    if not policy.needs_cooccurrence:
        return None
    if table is None:
        raise ValueError(
            f"Augmentation policy {policy.to_string()!r} uses substitute/insert, which need "
            "a co-occurrence table: pass table=cooccurrence_table(...) (bt_tf.data.dataset."
            "make_dataset builds it from the train split)."
        )
    table = tf.convert_to_tensor(table)
    if table.shape.rank != 2 or not table.dtype.is_integer:
        raise ValueError(
            f"table must be an int [vocab, k] tensor, got {table.dtype} {table.shape}."
        )
    return table


def augment(items: tf.Tensor, seed, policy: AugmentPolicy, table=None) -> tf.Tensor:
    """One random view of ``items`` under ``policy`` (see `AugmentPolicy`).

    Args:
      items: ``int[batch, max_len]``, right-padded with ``PAD_ID``.
      seed: ``int[2]`` stateless seed.
      policy: an `AugmentPolicy`.
      table: ``int[vocab, k]`` co-occurrence table (`cooccurrence_table`);
        required when the policy uses substitute or insert, else ignored.

    Returns:
      ``int[batch, max_len]``, same dtype.
    """
    if policy.is_identity:
        return items
    table = _check_table(policy, table)
    return _augment(items, _draw(items, seed, [policy.num_blocks]), policy, table)


def _augment(items: tf.Tensor, u: tf.Tensor, policy: AugmentPolicy, table=None) -> tf.Tensor:
    """`augment` on random blocks ``u: float64[policy.num_blocks, batch, max_len + 2]``."""
    out = items
    max_len = tf.shape(items)[1]
    num_ops, picks = len(policy.ops), 0
    for index, (name, strength) in enumerate(policy.ops):
        # Lengths are re-derived after each op: crop shortens rows, insert
        # lengthens them, and MASK_ID != PAD_ID so masking never changes them.
        lengths = sequence_lengths(out)
        block = u[index]
        if name in _TABLE_OPS:
            block = tf.concat([block, u[num_ops + picks]], axis=1)
            picks += 1
        changed = _OPS[name](out, block, strength, lengths, table)
        if policy.apply_prob < 1.0:
            apply = u[index][:, max_len + 1] < policy.apply_prob
            changed = tf.where(apply[:, None], changed, out)
        out = changed
    return out


def two_views(
    items: tf.Tensor, seed, policy: AugmentPolicy, table=None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Two independent views of the same batch: ``(view1, view2)``, each like ``items``.

    Both views' randomness comes from one draw of ``[2, num_ops, ...]`` blocks;
    the views use disjoint halves of it, so they are independent. ``table`` as
    in `augment`.
    """
    if policy.is_identity:
        return items, items
    table = _check_table(policy, table)
    u = _draw(items, seed, [2, policy.num_blocks])
    return _augment(items, u[0], policy, table), _augment(items, u[1], policy, table)

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

* padding is never augmented in: positions ``>= length`` stay ``PAD_ID``, and
  no real position becomes ``PAD_ID`` (only ``crop`` shortens a row, and then
  the dropped tail is padding again);
* rows of length 0 or 1 pass through unchanged.

The ops (the paper's masking and reordering, plus cropping as in CL4SRec):

* ``mask(items, seed, gamma)``: each real item becomes ``MASK_ID`` w.p. ``gamma``.
* ``reorder(items, seed, beta)``: one contiguous span of ``floor(beta * len)``
  items, starting uniformly among the valid starts, is randomly permuted.
* ``crop(items, seed, eta)``: a contiguous window of ``max(1, floor(eta * len))``
  items, starting uniformly among the valid starts, moved to position 0.

``floor(x * len)`` is computed in float64, so it equals Python's
``math.floor(x * len)`` exactly.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from bt_tf.features import MASK_ID, PAD_ID

# Pinned so that eager (CPU kernel) and XLA give identical random numbers.
_ALG = "philox"

# Randomness layout. Each op consumes one block ``u: float64[batch, max_len + 2]``
# of U[0, 1) numbers: ``u[:, :max_len]`` per position (mask draws, reorder sort
# keys), ``u[:, max_len]`` the per-row start, ``u[:, max_len + 1]`` the per-row
# apply decision. `augment` and `two_views` draw all blocks of all views with
# ONE Philox call: every random op costs about a second of XLA compile time,
# so fewer, bigger draws keep `jit_compile=True` compilation fast.
_EXTRA_COLUMNS = 2

OP_ORDER = ("crop", "reorder", "mask")  # the fixed order `augment` applies them in


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


# name -> op on a random block: (items, u, strength, lengths) -> items
_OPS = {
    "crop": lambda x, u, eta, n: _crop(x, u, eta, n)[0],
    "reorder": lambda x, u, beta, n: _reorder(x, u, beta, n)[0],
    "mask": _mask,
}
_RANGES = {  # name -> (low, high, low inclusive)
    "mask": (0.0, 1.0, True),
    "reorder": (0.0, 1.0, True),
    "crop": (0.0, 1.0, False),
    "apply_prob": (0.0, 1.0, True),
}


@dataclasses.dataclass(frozen=True)
class AugmentPolicy:
    """Which augmentations make a view, and how strong each is.

    Each strength is ``None`` when the op is not used. ``augment`` applies the
    used ops in the fixed order crop -> reorder -> mask (crop first so that the
    reorder/mask fractions refer to the cropped length; mask last so masked
    positions are the ones the encoder sees). Each used op is applied to each
    row independently with probability ``apply_prob``; the default 1.0 always
    applies all of them (the paper's mask+reorder composition), 0.5 gives the
    "random composition" where a view may get any subset.

    Attributes:
      mask: gamma, probability that a real item is replaced by ``MASK_ID``.
      reorder: beta, fraction of the sequence in the permuted span.
      crop: eta, fraction of the sequence kept.
      apply_prob: per-row probability that each used op is applied.
    """

    mask: float | None = None
    reorder: float | None = None
    crop: float | None = None
    apply_prob: float = 1.0

    def __post_init__(self):
        for name in ("mask", "reorder", "crop", "apply_prob"):
            value = getattr(self, name)
            if value is None and name != "apply_prob":
                continue
            _check_value(name, value)

    @classmethod
    def from_string(cls, spec: str | None) -> AugmentPolicy:
        """Parse ``"mask:0.3,reorder:0.3"``, ``"crop:0.6,apply_prob:0.5"``, ...

        Names: ``mask``, ``reorder``, ``crop``, ``apply_prob``; each at most
        once, in any order. ``None``, ``""`` and ``"none"`` give the identity
        policy.
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
        """Inverse of `from_string` (``"none"`` for the identity policy)."""
        parts = [f"{n}:{getattr(self, n):g}" for n in OP_ORDER if getattr(self, n) is not None]
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


def augment(items: tf.Tensor, seed, policy: AugmentPolicy) -> tf.Tensor:
    """One random view of ``items`` under ``policy`` (see `AugmentPolicy`).

    Args:
      items: ``int[batch, max_len]``, right-padded with ``PAD_ID``.
      seed: ``int[2]`` stateless seed.
      policy: an `AugmentPolicy`.

    Returns:
      ``int[batch, max_len]``, same dtype.
    """
    if policy.is_identity:
        return items
    return _augment(items, _draw(items, seed, [len(policy.ops)]), policy)


def _augment(items: tf.Tensor, u: tf.Tensor, policy: AugmentPolicy) -> tf.Tensor:
    """`augment` on random blocks ``u: float64[num_ops, batch, max_len + 2]``."""
    out = items
    max_len = tf.shape(items)[1]
    for index, (name, strength) in enumerate(policy.ops):
        # Lengths are re-derived after each op: crop shortens rows, and
        # MASK_ID != PAD_ID so masking never changes them.
        lengths = sequence_lengths(out)
        changed = _OPS[name](out, u[index], strength, lengths)
        if policy.apply_prob < 1.0:
            apply = u[index][:, max_len + 1] < policy.apply_prob
            changed = tf.where(apply[:, None], changed, out)
        out = changed
    return out


def two_views(items: tf.Tensor, seed, policy: AugmentPolicy) -> tuple[tf.Tensor, tf.Tensor]:
    """Two independent views of the same batch: ``(view1, view2)``, each like ``items``.

    Both views' randomness comes from one draw of ``[2, num_ops, ...]`` blocks;
    the views use disjoint halves of it, so they are independent.
    """
    if policy.is_identity:
        return items, items
    u = _draw(items, seed, [2, len(policy.ops)])
    return _augment(items, u[0], policy), _augment(items, u[1], policy)

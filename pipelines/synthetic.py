"""Seeded synthetic interaction data with planted, learnable structure.

The project's built-in default dataset. Every downstream task of DESIGN.md is
learnable from a user's history because the generator plants:

- a catalog of items, each with one primary genre and (with probability
  ``second_genre_p``) a second one, and Zipf popularity (``zipf_exponent``);
- users with constant latent tastes over genres: each user strongly likes 1-3
  genres (Dirichlet weights over the liked genres, plus a small uniform floor
  ``taste_floor``), so the future favorite genre is predictable from history;
- sequential (Markov) dependence: each item has ``num_successors`` successor
  items (mostly of its own primary genre); with probability ``markov_p`` the
  next item is a successor of the previous one, otherwise it is drawn by
  taste x popularity, so next-item prediction is learnable beyond popularity;
- increasing Unix timestamps per user, with exact ties (``tie_p``) to exercise
  tie-breaking downstream;
- integer ratings 1-5 from the user's taste for the item's genres, a per-item
  quality, a per-user generosity and noise, so "liked (rating >= 4)" is
  learnable;
- a user attribute ``segment`` (``ATTRIBUTES``): a noisy function of the
  user's dominant genre (``segment_noise`` = probability of a random class).

Generation is in blocks of ``block_size`` users so that no process needs to
hold all interactions (the Beam pipeline calls :func:`generate_block` inside
workers). A block is always generated for the full ``block_size`` users and
then cut to ``num_users``, so a user's data depends only on the catalog
parameters, ``seed``, ``block_size`` and the per-user parameters, never on
``num_users``. The catalog is derived from ``seed`` and the catalog parameters
alone and cached per process.

Repeated items within one user's sequence are possible (as in re-watches);
nothing downstream assumes uniqueness.

Ids: users ``u000123`` (zero-based index, at least 6 digits), items ``i00042``
(at least 5 digits), genres ``g03``. :func:`write_movielens_csv` writes the
same data in the MovieLens-20M CSV layout with numeric ids (prefix stripped).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import itertools
import math
import os
import types
from collections.abc import Mapping

import numpy as np

_NUM_SEGMENTS = 5

ATTRIBUTES: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
    {"segment": tuple(f"s{i}" for i in range(_NUM_SEGMENTS))}
)
"""User attributes: name -> ordered raw class values (as in the user records)."""

# First timestamp of a user: uniform in [2000-01-01, 2014-01-01) (Unix seconds).
_T_START_MIN = 946_684_800
_T_START_MAX = 1_388_534_400
# Gaps between a user's interactions: lognormal seconds (median 6 h).
_GAP_MEDIAN_S = 6 * 3600
_GAP_SIGMA = 1.5
# Rating score = base + taste_coef * relative taste + item quality
# + user generosity + noise, rounded to 1..5 stars (all Gaussian, these s.d.).
_RATING_BASE = 1.6
_RATING_TASTE_COEF = 2.6
_RATING_NOISE_SD = 0.8
_ITEM_QUALITY_SD = 0.4
_USER_GENEROSITY_SD = 0.3
# Number of strongly liked genres per user: 1, 2 or 3 with these odds.
_LIKED_GENRES_P = (0.4, 0.4, 0.2)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """All parameters of the synthetic dataset; same config -> same data.

    Attributes:
        num_users: Number of users; ids ``u000000`` .. ``u{num_users-1}``.
        num_items: Catalog size; ids ``i00000`` .. ``i{num_items-1}``.
        num_genres: Number of genres ``g00`` .. ; at least 2.
        min_len: Minimum interactions per user (sequence length).
        mean_len: Mean interactions per user (exact in expectation).
        max_len_seq: Maximum interactions per user. Lengths are
            ``min_len + min(round(Exponential), max_len_seq - min_len)`` with
            the exponential scale solved so the mean is ``mean_len``.
        markov_p: Probability that an item (after the first) is a successor
            of the previous item rather than a taste x popularity draw.
        seed: Seed of everything (catalog and users).
        block_size: Users per generation block (see :func:`generate_block`).
            Changing it changes the users' data (not the catalog).
        zipf_exponent: Item popularity ~ 1 / rank**zipf_exponent.
        second_genre_p: Probability that an item has a second genre.
        num_successors: Successor items per item (Markov transitions).
        successor_same_genre: Probability a successor shares the item's
            primary genre.
        taste_floor: Share of each user's taste spread uniformly over all
            genres (the rest goes to their 1-3 liked genres).
        segment_noise: Probability a user's segment is random instead of the
            segment of their dominant genre.
        tie_p: Probability that an interaction has exactly the timestamp of
            the previous one.
    """

    num_users: int = 6000
    num_items: int = 1500
    num_genres: int = 12
    min_len: int = 20
    mean_len: float = 40.0
    max_len_seq: int = 100
    markov_p: float = 0.4
    seed: int = 0
    block_size: int = 1000
    zipf_exponent: float = 1.0
    second_genre_p: float = 0.3
    num_successors: int = 3
    successor_same_genre: float = 0.8
    taste_floor: float = 0.1
    segment_noise: float = 0.2
    tie_p: float = 0.05

    def __post_init__(self):
        problems = []
        if self.num_users < 1:
            problems.append(f"num_users={self.num_users} must be >= 1")
        if self.num_genres < 2:
            problems.append(f"num_genres={self.num_genres} must be >= 2")
        if self.num_items < max(2, self.num_genres):
            problems.append(
                f"num_items={self.num_items} must be >= num_genres={self.num_genres} "
                "(every genre needs an item) and >= 2"
            )
        if not 1 <= self.min_len <= self.mean_len <= self.max_len_seq:
            problems.append(
                "need 1 <= min_len <= mean_len <= max_len_seq, got "
                f"{self.min_len}, {self.mean_len}, {self.max_len_seq}"
            )
        for name in (
            "markov_p",
            "second_genre_p",
            "successor_same_genre",
            "taste_floor",
            "segment_noise",
            "tie_p",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name}={getattr(self, name)} must be in [0, 1]")
        if self.num_successors < 1:
            problems.append(f"num_successors={self.num_successors} must be >= 1")
        if self.block_size < 1:
            problems.append(f"block_size={self.block_size} must be >= 1")
        if self.zipf_exponent < 0:
            problems.append(f"zipf_exponent={self.zipf_exponent} must be >= 0")
        if problems:
            raise ValueError("Invalid SyntheticConfig: " + "; ".join(problems))


def num_blocks(config: SyntheticConfig) -> int:
    """Number of generation blocks: ceil(num_users / block_size)."""
    return -(-config.num_users // config.block_size)


def user_id(index) -> str:
    """Raw id of the user with zero-based ``index``: ``u000123``."""
    return f"u{int(index):06d}"


def item_id(index) -> str:
    """Raw id of the item with zero-based ``index``: ``i00042``."""
    return f"i{int(index):05d}"


def genre_name(index) -> str:
    """Name of genre ``index``: ``g03``."""
    return f"g{int(index):02d}"


# --------------------------------------------------------------------------
# Catalog (from seed and catalog parameters only; cached)


@dataclasses.dataclass(frozen=True)
class _Catalog:
    genre1: np.ndarray  # int64 [num_items] primary genre
    genre2: np.ndarray  # int64 [num_items] second genre or -1
    popularity: np.ndarray  # float64 [num_items], sums to 1
    successors: np.ndarray  # int64 [num_items, num_successors]
    genre_weight: np.ndarray  # float64 [num_genres] prior of liking a genre
    # Taste x popularity draws: for genre g, pool_cum[pool_start[g]:pool_start[g+1]]
    # rises from g to g+1 (cumulative popularity of the genre's items, offset by g).
    pool_items: np.ndarray
    pool_cum: np.ndarray
    pool_start: np.ndarray
    quality: np.ndarray  # float64 [num_items] item rating bias
    ids: np.ndarray  # str [num_items] raw ids


def _catalog_key(config: SyntheticConfig) -> tuple:
    return (
        config.seed,
        config.num_items,
        config.num_genres,
        config.zipf_exponent,
        config.second_genre_p,
        config.num_successors,
        config.successor_same_genre,
    )


def _catalog(config: SyntheticConfig) -> _Catalog:
    return _build_catalog(*_catalog_key(config))


def _offset_cumsum(groups: np.ndarray, weights: np.ndarray, num_groups: int):
    """Per-group cumulative weights offset by the group index (see `_Catalog`).

    ``groups`` must be sorted. Returns (cum, start) with cum in (g, g+1] for
    group g and group g occupying ``cum[start[g]:start[g+1]]``.
    """
    start = np.searchsorted(groups, np.arange(num_groups + 1))
    totals = np.add.reduceat(weights, start[:-1])
    cum = np.cumsum(weights)
    before = np.concatenate([[0.0], cum])[start[:-1]]
    cum = (cum - before[groups]) / totals[groups] + groups
    cum[start[1:] - 1] = np.arange(1, num_groups + 1)  # exact upper ends
    return cum, start


def _draw_in_groups(rng, cum, start, groups) -> np.ndarray:
    """One index into ``cum`` per entry of ``groups``, weighted within the group."""
    u = rng.random(len(groups))
    idx = np.searchsorted(cum, groups + u, side="right")
    return np.clip(idx, start[groups], start[groups + 1] - 1)


@functools.lru_cache(maxsize=8)
def _build_catalog(
    seed, num_items, num_genres, zipf_exponent, second_genre_p, num_successors, same_p
) -> _Catalog:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    n, g = num_items, num_genres
    genre_weight = rng.dirichlet(np.full(g, 5.0))
    genre1 = np.concatenate([np.arange(g), rng.choice(g, n - g, p=genre_weight)])
    rng.shuffle(genre1)
    # Second genre: a different one, uniformly.
    has2 = rng.random(n) < second_genre_p
    genre2 = np.where(has2, (genre1 + rng.integers(1, g, n)) % g, -1)
    ranks = rng.permutation(n)
    popularity = 1.0 / (ranks + 1.0) ** zipf_exponent
    popularity /= popularity.sum()
    quality = rng.normal(0.0, _ITEM_QUALITY_SD, n)

    # Base-draw pools: primary members at full popularity, second at half.
    members = np.concatenate([np.arange(n), np.flatnonzero(has2)])
    member_genre = np.concatenate([genre1, genre2[has2]])
    member_w = np.concatenate([popularity, 0.5 * popularity[has2]])
    order = np.argsort(member_genre, kind="stable")
    pool_cum, pool_start = _offset_cumsum(member_genre[order], member_w[order], g)
    pool_items = members[order]

    # Successors: weighted by sqrt(popularity), so transitions are not just
    # the popular items; never the item itself.
    succ_w = np.sqrt(popularity)
    by_genre = np.argsort(genre1, kind="stable")
    scum, sstart = _offset_cumsum(genre1[by_genre], succ_w[by_genre], g)
    src = np.repeat(np.arange(n), num_successors)
    succ = by_genre[_draw_in_groups(rng, scum, sstart, genre1[src])]
    global_cum = np.cumsum(succ_w) / succ_w.sum()
    other = rng.random(len(src)) >= same_p
    while True:
        redo = other | (succ == src)
        if not redo.any():
            break
        succ[redo] = np.minimum(
            np.searchsorted(global_cum, rng.random(redo.sum()), side="right"), n - 1
        )
        other = np.zeros_like(other)
    ids = np.array([item_id(i) for i in range(n)])
    return _Catalog(
        genre1=genre1,
        genre2=genre2,
        popularity=popularity,
        successors=succ.reshape(n, num_successors),
        genre_weight=genre_weight,
        pool_items=pool_items,
        pool_cum=pool_cum,
        pool_start=pool_start,
        quality=quality,
        ids=ids,
    )


def item_records(config: SyntheticConfig) -> list[tuple[str, tuple[str, ...]]]:
    """The whole catalog: ``[(item_id, (primary genre, [second genre])), ...]``.

    Ordered by item index; deterministic from ``config.seed`` and the catalog
    parameters (not from ``num_users``).
    """
    cat = _catalog(config)
    return [
        (
            iid,
            (genre_name(g1),) if g2 < 0 else (genre_name(g1), genre_name(g2)),
        )
        for iid, g1, g2 in zip(
            cat.ids.tolist(), cat.genre1.tolist(), cat.genre2.tolist(), strict=True
        )
    ]


# --------------------------------------------------------------------------
# Users


@functools.lru_cache(maxsize=64)
def _exponential_scale(mean_extra: float, cap: int) -> float:
    """Scale s with E[min(Exp(s), cap)] = s * (1 - exp(-cap/s)) = mean_extra."""
    lo, hi = 1e-9, 1e12
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if mid * -math.expm1(-cap / mid) < mean_extra:
            lo = mid
        else:
            hi = mid
    return lo


def _lengths(rng, config: SyntheticConfig, size: int) -> np.ndarray:
    cap = config.max_len_seq - config.min_len
    extra = config.mean_len - config.min_len
    if extra <= 0 or cap == 0:
        return np.full(size, config.min_len, np.int64)
    if extra >= cap:
        return np.full(size, config.max_len_seq, np.int64)
    draws = rng.exponential(_exponential_scale(float(extra), cap), size)
    return config.min_len + np.minimum(np.rint(draws), cap).astype(np.int64)


def _block_arrays(config: SyntheticConfig, block: int) -> dict[str, np.ndarray]:
    """Numeric data of one block (before cutting to num_users).

    Returns int64 ``user`` [N] (global user index), int64 ``item`` [N] (item
    index), int64 ``timestamp`` [N], float32 ``rating`` [N] (1..5), and per
    user (``block_size`` rows): ``taste`` [B, G] float64, ``segment`` [B]
    int64, ``length`` [B] int64. Interactions are user-major, chronological.
    The draws from the block's generator happen in a fixed order (users,
    items, timestamps, ratings): the same seed gives the same data.
    """
    if not 0 <= block < num_blocks(config):
        raise ValueError(
            f"block={block} is out of range: num_users={config.num_users} with "
            f"block_size={config.block_size} gives blocks 0..{num_blocks(config) - 1}"
        )
    cat = _catalog(config)
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(1, block)))
    users = _user_draws(rng, config, cat)
    length = users["length"]

    # Flat (user-major) interaction cells.
    n = int(length.sum())
    row = np.repeat(np.arange(config.block_size), length)
    first = np.zeros(n, bool)
    first[np.cumsum(length)[:-1]] = True
    first[0] = True

    item = _item_draws(rng, config, cat, users["taste"], row, first, length)
    timestamp = _timestamp_draws(rng, config, first, length)
    rating = _rating_draws(rng, cat, users, item, row)
    return {
        "user": block * config.block_size + row.astype(np.int64),
        "item": item,
        "timestamp": timestamp,
        "rating": rating,
        "taste": users["taste"],
        "segment": users["segment"].astype(np.int64),
        "length": length,
    }


def _user_draws(rng, config: SyntheticConfig, cat) -> dict[str, np.ndarray]:
    """Per user of a block: ``taste`` [B, G], ``segment``, ``generosity``, ``length``."""
    b, g = config.block_size, config.num_genres
    # Tastes: k in {1, 2, 3} liked genres (Gumbel top-k by genre prior),
    # Dirichlet(2) weights over them, plus a uniform floor.
    k_prob = np.array(_LIKED_GENRES_P)[: min(3, g)]
    k = rng.choice(np.arange(1, len(k_prob) + 1), b, p=k_prob / k_prob.sum())
    keys = np.log(cat.genre_weight) + rng.gumbel(size=(b, g))
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    liked = rank < k[:, None]
    w = np.where(liked, rng.gamma(2.0, size=(b, g)), 0.0)
    taste = (1 - config.taste_floor) * w / w.sum(1, keepdims=True) + config.taste_floor / g
    dominant = taste.argmax(1)
    segment = np.where(
        rng.random(b) < config.segment_noise,
        rng.integers(0, _NUM_SEGMENTS, b),
        dominant % _NUM_SEGMENTS,
    )
    generosity = rng.normal(0.0, _USER_GENEROSITY_SD, b)
    length = _lengths(rng, config, b)
    return {"taste": taste, "segment": segment, "generosity": generosity, "length": length}


def _item_draws(rng, config: SyntheticConfig, cat, taste, row, first, length) -> np.ndarray:
    """Item of each interaction cell: genre ~ taste, item ~ popularity, Markov successors."""
    n, g = len(row), config.num_genres
    # Base draws: genre ~ taste (offset-cumsum trick across rows), item ~
    # popularity within the genre.
    tcum = np.cumsum(taste, axis=1)
    tcum /= tcum[:, -1:]
    tcum = (tcum + np.arange(len(taste))[:, None]).ravel()
    genre = np.searchsorted(tcum, row + rng.random(n), side="right") - row * g
    genre = np.clip(genre, 0, g - 1)
    base = cat.pool_items[_draw_in_groups(rng, cat.pool_cum, cat.pool_start, genre)]

    # Markov: with prob. markov_p an item is a successor of the previous one.
    markov = (rng.random(n) < config.markov_p) & ~first
    choice = rng.integers(0, config.num_successors, n)
    # Successor cells grouped by position: each step depends on the previous
    # position only, so all users advance together.
    pos = np.arange(n) - np.repeat(np.cumsum(length) - length, length)
    item = base.copy()
    cells = np.flatnonzero(markov)
    cells = cells[np.argsort(pos[cells], kind="stable")]
    bounds = np.searchsorted(pos[cells], np.arange(1, int(length.max()) + 1))
    for lo, hi in itertools.pairwise(bounds):
        step = cells[lo:hi]
        item[step] = cat.successors[item[step - 1], choice[step]]
    return item


def _timestamp_draws(rng, config: SyntheticConfig, first, length) -> np.ndarray:
    """Timestamps: start + cumulative gaps (lognormal, median 6 h), some ties."""
    n = len(first)
    gaps = np.rint(rng.lognormal(math.log(_GAP_MEDIAN_S), _GAP_SIGMA, n)).astype(np.int64)
    gaps[rng.random(n) < config.tie_p] = 0
    gaps[first] = rng.integers(_T_START_MIN, _T_START_MAX, config.block_size)
    timestamp = np.cumsum(gaps)
    timestamp -= np.repeat(timestamp[first] - gaps[first], length)
    return timestamp


def _rating_draws(rng, cat, users: dict, item, row) -> np.ndarray:
    """Ratings: relative taste for the item's best genre, item quality, user
    generosity, noise; rounded to integer stars 1..5."""
    taste = users["taste"]
    g2 = cat.genre2[item]
    aff = np.maximum(
        taste[row, cat.genre1[item]],
        np.where(g2 >= 0, taste[row, np.maximum(g2, 0)], 0.0),
    )
    rel = aff / taste.max(1)[row]
    score = (
        _RATING_BASE
        + _RATING_TASTE_COEF * rel
        + cat.quality[item]
        + users["generosity"][row]
        + rng.normal(0.0, _RATING_NOISE_SD, len(item))
    )
    return np.clip(np.rint(score), 1, 5).astype(np.float32)


def _block_user_count(config: SyntheticConfig, block: int) -> int:
    return min(config.block_size, config.num_users - block * config.block_size)


def _cut(arrays: dict, n_users: int) -> dict:
    """Keep the first ``n_users`` users of a block."""
    n = int(arrays["length"][:n_users].sum())
    return {key: arrays[key][:n] for key in ("user", "item", "timestamp", "rating")}


def generate_block(
    config: SyntheticConfig, block: int
) -> tuple[dict[str, np.ndarray], list[tuple[str, dict[str, str]]]]:
    """Interactions and user records of the users of one block.

    Those are users ``[block*block_size, min((block+1)*block_size, num_users))``.

    Args:
        config: The dataset parameters.
        block: Block index in ``[0, num_blocks(config))``.

    Returns:
        ``(columns, users)``. ``columns`` holds N interactions, user-major and
        chronological within a user: ``"user"`` str [N] (``u000123``),
        ``"item"`` str [N] (``i00042``), ``"timestamp"`` int64 [N] (Unix
        seconds, non-decreasing per user, with exact ties), ``"rating"``
        float32 [N] (integer stars 1..5). ``users`` is
        ``[(user_id, {"segment": "s2"}), ...]`` in user order.

    Deterministic for (config, block); a user's data does not depend on
    ``num_users`` (the block is generated in full, then cut).
    """
    arrays = _block_arrays(config, block)
    n_users = _block_user_count(config, block)
    flat = _cut(arrays, n_users)
    first = block * config.block_size
    user_ids = np.array([user_id(first + i) for i in range(n_users)])
    classes = ATTRIBUTES["segment"]
    columns = {
        "user": np.repeat(user_ids, arrays["length"][:n_users]),
        "item": _catalog(config).ids[flat["item"]],
        "timestamp": flat["timestamp"],
        "rating": flat["rating"],
    }
    users = [
        (uid, {"segment": classes[s]})
        for uid, s in zip(user_ids.tolist(), arrays["segment"][:n_users].tolist())
    ]
    return columns, users


# --------------------------------------------------------------------------
# MovieLens-20M layout


def _write_ratings_block(f, flat: dict) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # Ratings as strings "4.0" (the ML-20M spelling) via a dictionary column.
    stars = pa.DictionaryArray.from_arrays(
        pa.array(np.rint(flat["rating"] * 2).astype(np.int8)),
        pa.array([f"{h / 2:.1f}" for h in range(11)]),
    )
    table = pa.table(
        {
            "userId": flat["user"],
            "movieId": flat["item"],
            "rating": stars.cast(pa.string()),
            "timestamp": flat["timestamp"],
        }
    )
    pacsv.write_csv(
        table,
        f,
        pacsv.WriteOptions(include_header=False, quoting_style="none", batch_size=1 << 16),
    )


def write_movielens_csv(config: SyntheticConfig, out_dir: str) -> dict:
    """Write the dataset as MovieLens-20M ``ratings.csv`` and ``movies.csv``.

    ``ratings.csv``: header ``userId,movieId,rating,timestamp``; numeric ids
    (the ``u``/``i`` prefixes stripped, so ``u000123`` -> ``123``); ratings
    spelled like ML-20M (``4.0``); rows user-major, chronological. Streamed
    block by block: at most one block is in memory.
    ``movies.csv``: header ``movieId,title,genres``; genres ``|``-separated
    (``g03|g07``); titles contain commas and are quoted like the real file.

    Args:
        config: The dataset parameters.
        out_dir: Directory to write into (created if missing).

    Returns:
        ``{"num_users", "num_items", "num_ratings", "ratings_path",
        "movies_path"}``.
    """
    os.makedirs(out_dir, exist_ok=True)
    ratings_path = os.path.join(out_dir, "ratings.csv")
    movies_path = os.path.join(out_dir, "movies.csv")
    num_ratings = 0
    with open(ratings_path, "wb") as f:
        f.write(b"userId,movieId,rating,timestamp\n")
        for block in range(num_blocks(config)):
            flat = _cut(_block_arrays(config, block), _block_user_count(config, block))
            _write_ratings_block(f, flat)
            num_ratings += len(flat["item"])
    records = item_records(config)
    with open(movies_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["movieId", "title", "genres"])
        for index, (_, genres) in enumerate(records):
            year = 1950 + index % 65
            title = (
                f"Synthetic Film {index}, The ({year})"
                if index % 3 == 0
                else f"Synthetic Film {index} ({year})"
            )
            writer.writerow([index, title, "|".join(genres)])
    return {
        "num_users": config.num_users,
        "num_items": len(records),
        "num_ratings": num_ratings,
        "ratings_path": ratings_path,
        "movies_path": movies_path,
    }

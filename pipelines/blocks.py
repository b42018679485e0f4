"""Users in buckets, blocks, the k-core and the vocabularies: numpy, no Beam.

Each user belongs to one bucket (split, shard, part), from a hash of the user
id: the split, the output shard its Example goes to, and one of
`PARTS_PER_SHARD` parts of that shard. Interactions are grouped per bucket,
not per user, so a group is a few large numpy arrays rather than one small
group per user, and each bucket becomes one *block*: its users' interactions
as columns sorted by (user id, timestamp, input position), with items as
int32 codes into the sorted distinct item ids (the "catalog"). A block holds
about 1 / (3 * num_shards * PARTS_PER_SHARD) of the data, never all of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable

import numpy as np

from bt_tf import features as F
from pipelines.columnar import codes, positions, sequence_order, unique
from pipelines.config import PreprocessConfig

PARTS_PER_SHARD = 8


def _split_of_digest(digest: bytes, train_percent: int, eval_percent: int) -> str:
    bucket = int.from_bytes(digest[:8], "big") % 100
    if bucket < train_percent:
        return "train"
    return "eval" if bucket < train_percent + eval_percent else "test"


def split_of(user_id: str, train_percent: int, eval_percent: int) -> str:
    """Stable split by a hash of the user id (the same on every machine and run)."""
    digest = hashlib.sha256(user_id.encode("utf-8")).digest()
    return _split_of_digest(digest, train_percent, eval_percent)


def bucket_of(user: bytes, config: PreprocessConfig) -> tuple[str, int, int]:
    """(split, shard, part) of a user id (UTF-8 bytes)."""
    digest = hashlib.sha256(user).digest()
    return (
        _split_of_digest(digest, config.train_percent, config.eval_percent),
        int.from_bytes(digest[:4], "big") % config.num_shards,
        int.from_bytes(digest[8:16], "big") % PARTS_PER_SHARD,
    )


def to_fragments(batch: dict[str, np.ndarray], config: PreprocessConfig):
    """Columnar batch -> (bucket, fragment): the batch's rows of each bucket.

    A fragment's rows are sorted by user; its users are run-length coded
    (``"user"`` distinct ids, ``"count"`` rows of each); its input positions
    are the batch's: offsets from ``"position_base"`` (`columnar.with_positions`).
    """
    users, owner = unique(batch["user"])
    buckets = [bucket_of(u, config) for u in users.tolist()]
    keys = sorted(set(buckets))
    index = {key: i for i, key in enumerate(keys)}
    row_bucket = np.asarray([index[b] for b in buckets], dtype=np.int64)[owner]
    order = np.lexsort((owner, row_bucket))
    bounds = np.searchsorted(row_bucket[order], np.arange(len(keys) + 1))
    for i, key in enumerate(keys):
        rows = order[bounds[i] : bounds[i + 1]]
        ids, counts = np.unique(owner[rows], return_counts=True)
        yield (
            key,
            {
                "user": users[ids],
                "count": counts,
                "item": batch["item"][rows],
                "timestamp": batch["timestamp"][rows],
                "rating": batch["rating"][rows],
                "position": batch["position"][rows],
                "position_base": batch["position_base"],
            },
        )


def first_record(records: Iterable[dict]) -> dict:
    """A user listed twice: the smallest record wins, whatever the arrival order."""
    return min(records, key=lambda a: sorted(a.items()))


def build_block(fragments: list[dict], user_records: Iterable[tuple], catalog: np.ndarray):
    """One bucket's fragments (at least one) and (user, attributes) records -> (block, drops).

    A block: ``"user"`` (sorted distinct ids, bytes), ``"length"`` (interactions
    per user), ``"item"`` (int32 catalog codes), ``"timestamp"``, ``"rating"``
    (all per interaction, user after user, each user's sorted by timestamp,
    ties in input order: by the fragments' positions, so the order follows
    the input files and never depends on chunking, sharding or the order the
    fragments arrive in), ``"attributes"`` (user -> attribute dict) and
    ``"num_items"`` (catalog size). The positions are not kept: nothing after
    this sort reorders a user's interactions.
    `drops`: the user records left out, by reason (`user_attributes`).
    """
    users, fragment_users = unique(np.concatenate([f["user"] for f in fragments]))
    owner = np.repeat(fragment_users, np.concatenate([f["count"] for f in fragments]))
    item = codes(np.concatenate([f["item"] for f in fragments]), catalog)
    timestamp = np.concatenate([f["timestamp"] for f in fragments])
    rating = np.concatenate([f["rating"] for f in fragments])
    order = sequence_order(owner, timestamp, np.concatenate([positions(f) for f in fragments]))
    attributes, drops = user_attributes(user_records, users)
    block = {
        "user": users,
        "length": np.bincount(owner, minlength=len(users)),
        "item": item[order],
        "timestamp": timestamp[order],
        "rating": rating[order],
        "attributes": attributes,
        "num_items": len(catalog),
    }
    return block, drops


def user_attributes(user_records: Iterable[tuple], users: np.ndarray) -> tuple[dict, dict]:
    """(user -> attributes of the `users` that have a record, records left out by reason).

    Reasons: ``"duplicate_user_records"`` (a user listed again: `first_record`
    wins) and ``"user_records_without_interactions"``.
    """
    records: dict[bytes, list[dict]] = {}
    for u, attributes in user_records:
        records.setdefault(u, []).append(attributes)
    present = set(users.tolist()) if records else set()
    kept = {u: r for u, r in records.items() if u in present}
    drops = {
        "duplicate_user_records": sum(len(r) - 1 for r in kept.values()),
        "user_records_without_interactions": sum(
            len(r) for u, r in records.items() if u not in present
        ),
    }
    return {u: first_record(r) for u, r in kept.items()}, drops


# --------------------------------------------------------------------------
# Step 3: k-core
#
# Rounds never rewrite the blocks. Round j's data is the blocks minus two
# cumulative sets: the items found rare in rounds 0..j-1 (removed from every
# user), and the users found short in rounds 0..j-1. Item removal only
# shortens users, so a user is still there in round j exactly when its length
# without the items of rounds 0..j-2 is at least min_user. Each round is thus
# a vectorized count over the same blocks given (items removed before round
# j-1, items removed before round j): its `KCoreState`.


@dataclasses.dataclass(frozen=True)
class KCoreState:
    """Items removed before the previous round (None: this is round 0) and before this one."""

    removed_before_last: np.ndarray | None
    removed: np.ndarray  # sorted catalog codes


def _remaining_lengths(block: dict, removed: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """(mask of the interactions whose item is not removed, or None: all; per-user lengths)."""
    if not len(removed):
        return None, block["length"]
    is_removed = np.zeros(block["num_items"], dtype=bool)
    is_removed[removed] = True
    keep = ~is_removed[block["item"]]
    running = np.concatenate([[0], np.cumsum(keep)])
    ends = np.cumsum(block["length"])
    return keep, running[ends] - running[ends - block["length"]]


def _k_core_view(block: dict, state: KCoreState, min_user: int):
    """(users still there, mask of the interactions whose item is not removed or
    None: all, every user's length without the removed items)."""
    keep, lengths = _remaining_lengths(block, state.removed)
    if state.removed_before_last is None:
        present = np.ones(len(lengths), dtype=bool)
    else:
        present = _remaining_lengths(block, state.removed_before_last)[1] >= min_user
    return present, keep, lengths


def _sparse_counts(block: dict, users: np.ndarray, keep: np.ndarray | None, short: int = 0):
    """(item codes, their counts over `users` (a mask) and `keep`, `short`, catalog size)."""
    mask = np.repeat(users, block["length"])
    if keep is not None:
        mask &= keep
    counts = np.bincount(block["item"][mask], minlength=block["num_items"])
    codes = np.flatnonzero(counts)
    return codes, counts[codes], short, block["num_items"]


def k_core_counts(kv, state: KCoreState, min_user: int) -> tuple:
    """One block's part of a round: `_sparse_counts` over the users with at least
    `min_user` interactions, and the number of users shorter than that."""
    present, keep, lengths = _k_core_view(kv[1], state, min_user)
    long_enough = present & (lengths >= min_user)
    return _sparse_counts(kv[1], long_enough, keep, int((present & ~long_enough).sum()))


def train_counts(kv, state: KCoreState, min_user: int):
    """`_sparse_counts` of a train block as the k-core left it (nothing for other splits)."""
    if kv[0][0] == "train":
        present, keep, _ = _k_core_view(kv[1], state, min_user)
        yield _sparse_counts(kv[1], present, keep)


def k_core_filter(block: dict, state: KCoreState, min_user: int) -> dict:
    """A block as the k-core left it: its users still there, without removed items."""
    present, keep, lengths = _k_core_view(block, state, min_user)
    mask = np.repeat(present, block["length"])
    if keep is not None:
        mask &= keep
    if mask.all() and present.all():
        return block
    out = dict(block, user=block["user"][present], length=lengths[present])
    for column in ("item", "timestamp", "rating"):
        out[column] = block[column][mask]
    return out


def rare_items(summed, min_item: int) -> tuple[np.ndarray, int]:
    """A round's result: (sorted codes of the items with fewer than `min_item`
    interactions among users that have at least `min_user`, number of users
    shorter than `min_user`)."""
    counts, short = summed
    if counts is None:
        return np.zeros(0, dtype=np.int64), short
    return np.flatnonzero((counts > 0) & (counts < min_item)), short


def next_state(round_output, state: KCoreState) -> KCoreState:
    rare, _ = round_output
    return KCoreState(state.removed, np.union1d(state.removed, rare).astype(np.int64))


# --------------------------------------------------------------------------
# Vocabularies (the split is the bucket's)


def item_tables(summed_counts, catalog: np.ndarray, item_genres: dict) -> dict:
    """Vocabularies and per-catalog-code lookup tables from train users' `SumCounts`.

    Both vocabularies are frequency-ordered over train users' interactions,
    ties by token, reserved tokens first. Per code: ``"vocab_id"`` (OOV when
    no train user has the item) and the item's genres as genre vocab ids
    (``"genre_ids"`` from ``"genre_start"``, ``"genre_count"`` of them).
    """
    num_items = len(catalog)
    counts = summed_counts[0]
    if counts is None:  # no train users
        counts = np.zeros(num_items, np.int64)
    seen = np.flatnonzero(counts)
    ranked = seen[np.lexsort((seen, -counts[seen]))]
    names = [i.decode("utf-8") for i in catalog.tolist()]
    reserved = len(F.RESERVED_TOKENS)
    vocab_id = np.full(num_items, F.OOV_ID, dtype=np.int64)
    vocab_id[ranked] = np.arange(reserved, reserved + len(ranked))
    genres = [item_genres.get(name, ()) for name in names]
    genre_counts: dict[str, int] = {}
    for code, n in zip(seen.tolist(), counts[seen].tolist()):
        for g in genres[code]:
            genre_counts[g] = genre_counts.get(g, 0) + n
    genre_tokens = list(F.RESERVED_TOKENS) + sorted(
        genre_counts, key=lambda g: (-genre_counts[g], g)
    )
    genre_index = {g: i for i, g in enumerate(genre_tokens)}
    genre_count = np.asarray([len(gs) for gs in genres], dtype=np.int64)
    return {
        "items": list(F.RESERVED_TOKENS) + [names[c] for c in ranked.tolist()],
        "genres": genre_tokens,
        "vocab_id": vocab_id,
        "genre_start": np.concatenate([[0], np.cumsum(genre_count)]).astype(np.int64),
        "genre_count": genre_count,
        "genre_ids": np.asarray(
            [genre_index.get(g, F.OOV_ID) for gs in genres for g in gs], dtype=np.int64
        ),
        "items_without_metadata": sum(name not in item_genres for name in names),
    }

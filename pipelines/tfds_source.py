"""MovieLens from TensorFlow Datasets (`movielens/{100k,1m,20m}-ratings`).

`tfds_records(dataset, shard, num_shards)` reads one of `num_shards` even
sub-splits of the TFDS ``train`` split (`tfds.even_splits`), so every Beam
worker reads only its part, and yields the same record shapes as the raw
readers of `pipelines.sources`. The sub-splits are consecutive ranges of the
split's examples, read in TFDS's deterministic order (``shuffle_files=False``):
`shard_start` is the index of a shard's first example, so an example's index
in the split is the same for any number of shards (the pipeline orders a
user's same-second interactions by it). That order is not the raw file's:
TFDS stores the examples shuffled by a hash of their key (the line number).

* ``("interactions", (user_id, item_id, timestamp, rating))``
* ``("items", (item_id, genres))``: once per rating; the pipeline deduplicates.
* ``("users", (user_id, {"gender", "age", "occupation"}))``: ml-100k and
  ml-1m, once per rating.

Both sources give the same values for the same data: genre names are the
ClassLabel names of ``movie_genres`` with TFDS's renaming of the ML-1M genre
``Children's`` (to ``Children``) undone, ``(no genres listed)`` gives ``()``,
and user attributes use the raw ML-1M class values of
`pipelines.sources.ML1M_ATTRIBUTES`:

* gender: ``user_gender`` True -> ``"M"`` (TFDS: "a true value corresponds to
  male"), False -> ``"F"``.
* age: ``bucketized_user_age`` (1.0, 18.0, ...) -> ``"1"``, ``"18"``, ...;
  a value that is not a bucket code is bucketized the way TFDS does for
  ml-100k (largest code <= value, else ``"1"``).
* occupation: ``user_occupation_text`` (the raw ML-1M occupation name, which
  TFDS takes from the ``users.dat`` code) -> the code ``"0"``..``"20"``.
  ``user_occupation_label`` cannot be used directly: its 22 classes are
  alphabetical and merge ``K-12 student`` (10) and ``college/grad student``
  (4) into ``student``. Only if the text is not an ML-1M occupation (never in
  the real data; random in `tfds.testing.mock_data`) is the label used,
  with ``student`` -> ``"4"`` and the ml-100k-only ``entertainment`` and
  ``librarian`` -> ``"0"`` (other/not specified).

ml-100k uses `pipelines.sources.ML100K_ATTRIBUTES` (the raw u.user values):

* genres: the ``Unknown`` flag (TFDS's name for u.genre's ``unknown``) is
  dropped, as `pipelines.sources.parse_ml100k_item` drops it, and
  ``Children`` is named back ``Children's``.
* age: ``raw_user_age`` (years) -> `pipelines.sources.age_bucket`, the same
  function the raw reader applies to u.user.
* occupation: ``user_occupation_text`` is the raw u.user word (TFDS keeps it).
  ``user_occupation_label`` merges words (doctor and healthcare, marketing and
  salesman, none and other, engineer and technician), so it is used only if
  the text is not an ml-100k word (never in the real data; random in
  `tfds.testing.mock_data`), mapped to one word per label and to ``"other"``
  for the ML-1M-only labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from pipelines.sources import ML1M_ATTRIBUTES, ML100K_ATTRIBUTES, age_bucket

__all__ = ["TFDS_NAMES", "prepare_tfds", "shard_start", "tfds_attributes", "tfds_records"]

TFDS_NAMES = {
    "ml-100k": "movielens/100k-ratings",
    "ml-1m": "movielens/1m-ratings",
    "ml-20m": "movielens/20m-ratings",
}

# ML-1M occupation code -> name, in code order (README of ml-1m; TFDS uses the
# same table in tensorflow_datasets/structured/movielens_parsing.py).
_ML1M_OCCUPATIONS = (
    "other/not specified",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)
_OCCUPATION_CODE = {name: str(code) for code, name in enumerate(_ML1M_OCCUPATIONS)}
# Only for a `user_occupation_text` that is not an ML-1M name (see docstring).
# "entertainment" and "librarian" exist only in ml-100k: "other/not specified".
_LABEL_FALLBACK = {
    **_OCCUPATION_CODE,
    "student": _OCCUPATION_CODE["college/grad student"],
    "entertainment": "0",
    "librarian": "0",
}
# ml-100k: only for a `user_occupation_text` that is not an ml-100k word.
_ML100K_WORDS = frozenset(ML100K_ATTRIBUTES["occupation"])
_LABEL_FALLBACK_100K = {
    "academic/educator": "educator",
    "artist": "artist",
    "clerical/admin": "administrator",
    "doctor/health care": "healthcare",
    "entertainment": "entertainment",
    "executive/managerial": "executive",
    "homemaker": "homemaker",
    "lawyer": "lawyer",
    "librarian": "librarian",
    "other/not specified": "other",
    "programmer": "programmer",
    "retired": "retired",
    "sales/marketing": "marketing",
    "scientist": "scientist",
    "student": "student",
    "technician/engineer": "technician",
    "writer": "writer",
}  # other labels (customer service, farmer, ...) exist only in ML-1M: "other"
_NO_GENRES = "(no genres listed)"
_KEEP = ("user_id", "movie_id", "timestamp", "user_rating", "movie_genres")
_KEEP_1M = _KEEP + ("user_gender", "bucketized_user_age", "user_occupation_text")
_KEEP_100K = _KEEP + ("user_gender", "raw_user_age", "user_occupation_text")
_KEEP_1M_LABEL = "user_occupation_label"


def _tfds_name(dataset: str) -> str:
    try:
        return TFDS_NAMES[dataset]
    except KeyError:
        raise ValueError(
            f"no TFDS dataset for {dataset!r}; valid: {', '.join(TFDS_NAMES)}"
        ) from None


def tfds_attributes(dataset: str) -> Mapping[str, tuple[str, ...]]:
    """User attribute -> ordered class values, as `tfds_records` emits them.

    Equal to ``pipelines.sources.get_source(dataset).attributes``.
    """
    _tfds_name(dataset)
    if dataset == "ml-100k":
        return ML100K_ATTRIBUTES
    return ML1M_ATTRIBUTES if dataset == "ml-1m" else MappingProxyType({})


def _builder(dataset: str, data_dir: str | None):
    import tensorflow_datasets as tfds

    return tfds.builder(_tfds_name(dataset), data_dir=data_dir)


def prepare_tfds(dataset: str, data_dir: str | None = None) -> None:
    """Downloads and prepares the TFDS dataset unless it already is.

    Call once in the launching process before fanning out `tfds_records` over
    workers, so they do not all prepare it at the same time.
    """
    builder = _builder(dataset, data_dir)
    if not builder.is_prepared():
        builder.download_and_prepare()


def shard_start(dataset: str, shard: int, num_shards: int, data_dir: str | None = None):
    """Index in the TFDS train split of the first example `tfds_records` reads for `shard`.

    None when TFDS does not know the split's size (`tfds.testing.mock_data`).
    The TFDS dataset must be prepared (`prepare_tfds`).
    """
    import tensorflow_datasets as tfds

    splits = _builder(dataset, data_dir).info.splits
    try:
        known = splits["train"].num_examples is not None
    except KeyError:  # split sizes unknown (tfds.testing.mock_data)
        known = False
    if not known:
        return None
    (instruction,) = tfds.even_splits("train", n=num_shards)[shard].to_absolute(splits)
    return int(instruction.from_ or 0)  # None: the first example


def tfds_records(
    dataset: str,
    shard: int,
    num_shards: int,
    data_dir: str | None = None,
    *,
    batch_size: int = 1024,
) -> Iterator[tuple[str, tuple]]:
    """Yields the records of shard `shard` of `num_shards` of the TFDS train split.

    Args:
      dataset: ``"ml-100k"``, ``"ml-1m"`` or ``"ml-20m"``.
      shard: which sub-split, ``0 <= shard < num_shards``.
      num_shards: into how many even, disjoint sub-splits the train split is
        cut (`tfds.even_splits`, remainder spread over the first ones).
      data_dir: TFDS data directory; None = TFDS default (~/tensorflow_datasets).
      batch_size: examples converted to Python per step (a speed knob only).

    Yields:
      ``(kind, record)`` with kind ``"interactions"``, ``"items"`` or
      ``"users"``; see the module docstring.
    """
    if not 0 <= shard < num_shards:
        raise ValueError(
            f"need 0 <= shard < num_shards, got shard={shard}, num_shards={num_shards}"
        )
    import tensorflow as tf  # imported late (TF and TFDS are heavy): only --source=tfds
    import tensorflow_datasets as tfds

    builder = _builder(dataset, data_dir)
    if not builder.is_prepared():
        builder.download_and_prepare()
    try:
        num_examples = builder.info.splits["train"].num_examples
    except KeyError:  # split sizes unknown (tfds.testing.mock_data): TFDS decides
        num_examples = None
    if isinstance(num_examples, int) and shard >= num_examples:
        return  # even_splits leaves shards >= num_examples empty; TFDS would raise
    layout = _Layout.of(dataset, builder.info.features)
    split = tfds.even_splits("train", n=num_shards)[shard]
    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(lambda ex: {k: ex[k] for k in layout.keep})
    ds = ds.ragged_batch(batch_size).prefetch(tf.data.AUTOTUNE)
    for batch in ds:
        yield from layout.records(batch)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What `tfds_records` reads of a dataset's examples, and how it turns them to records."""

    dataset: str
    keep: tuple[str, ...]  # features read
    genre_names: list[str]  # by genre label
    dropped: frozenset[str]  # genres that mean "no genre"
    label_names: list[str]  # occupation label names (MovieLens 100K and 1M)

    @classmethod
    def of(cls, dataset: str, features) -> _Layout:
        genre_names = list(features["movie_genres"].feature.names)
        if dataset in ("ml-100k", "ml-1m"):  # undo TFDS's renaming so raw and TFDS agree
            genre_names = ["Children's" if g == "Children" else g for g in genre_names]
        dropped = {_NO_GENRES, "Unknown"} if dataset == "ml-100k" else {_NO_GENRES}
        if dataset == "ml-1m":
            keep = _KEEP_1M + (_KEEP_1M_LABEL,)
        elif dataset == "ml-100k":
            keep = _KEEP_100K + (_KEEP_1M_LABEL,)
        else:
            keep = _KEEP
        has_users = dataset in ("ml-100k", "ml-1m")
        label_names = features[_KEEP_1M_LABEL].names if has_users else []
        return cls(dataset, keep, genre_names, frozenset(dropped), label_names)

    def records(self, batch) -> Iterator[tuple[str, tuple]]:
        """The ``(kind, record)`` pairs of a ragged batch of examples."""
        user_ids = [u.decode() for u in batch["user_id"].numpy()]
        item_ids = [m.decode() for m in batch["movie_id"].numpy()]
        timestamps = batch["timestamp"].numpy().tolist()
        ratings = batch["user_rating"].numpy().tolist()
        genres = batch["movie_genres"].to_list()
        users = self._user_columns(batch)
        for i, user_id in enumerate(user_ids):
            item_id = item_ids[i]
            yield "interactions", (user_id, item_id, int(timestamps[i]), float(ratings[i]))
            names = (self.genre_names[g] for g in genres[i])
            yield "items", (item_id, tuple(g for g in names if g not in self.dropped))
            if users is not None:
                yield "users", (user_id, self._attributes(users, i))

    def _user_columns(self, batch) -> dict | None:
        if self.dataset not in ("ml-100k", "ml-1m"):
            return None
        age_key = "raw_user_age" if self.dataset == "ml-100k" else "bucketized_user_age"
        return {
            "gender": batch["user_gender"].numpy().tolist(),
            "age": batch[age_key].numpy().tolist(),
            "text": batch["user_occupation_text"].numpy().tolist(),
            "label": batch[_KEEP_1M_LABEL].numpy().tolist(),
        }

    def _attributes(self, users: dict, i: int) -> dict[str, str]:
        """The raw files' gender, age bucket and occupation of example `i`."""
        label = self.label_names[users["label"][i]]
        if self.dataset == "ml-1m":
            occupation = _OCCUPATION_CODE.get(users["text"][i].decode())
            if occupation is None:
                occupation = _LABEL_FALLBACK[label]
        else:
            occupation = users["text"][i].decode()
            if occupation not in _ML100K_WORDS:
                occupation = _LABEL_FALLBACK_100K.get(label, "other")
        gender = "M" if users["gender"][i] else "F"
        return {"gender": gender, "age": age_bucket(users["age"][i]), "occupation": occupation}

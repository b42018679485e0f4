"""The data contract: feature names and reserved ids shared by `pipelines` (writer) and
`bt_tf.data.dataset` (reader), and the keys of the batches that training reads.

One `tf.train.Example` per user. Sequences are chronological (oldest first);
the *history* is the model input (at most `max_len` most recent items), the
*future* the last `future_len` interactions, kept as downstream labels.

Per-item genres are ragged: `*_GENRE_IDS` holds the flat list of genre ids of
all items, `*_GENRE_COUNTS` how many of them belong to each item.
"""

# Reserved vocabulary ids (items and genres alike).
PAD_ID = 0
MASK_ID = 1
OOV_ID = 2
NUM_RESERVED = 3
RESERVED_TOKENS = ("<pad>", "<mask>", "<oov>")

USER_ID = "user_id"  # bytes, scalar: raw user id from the source
SPLIT = "split"  # not a feature: the split names below

HISTORY_LENGTH = "history_length"  # int64 scalar
HISTORY_ITEM_IDS = "history_item_ids"  # int64 [n] vocab ids
HISTORY_RAW_ITEM_IDS = "history_raw_item_ids"  # bytes [n] source ids
HISTORY_TIMESTAMPS = "history_timestamps"  # int64 [n] Unix seconds
HISTORY_RATINGS = "history_ratings"  # float [n]
HISTORY_GENRE_IDS = "history_genre_ids"  # int64 [sum(counts)]
HISTORY_GENRE_COUNTS = "history_genre_counts"  # int64 [n]

FUTURE_ITEM_IDS = "future_item_ids"
FUTURE_RAW_ITEM_IDS = "future_raw_item_ids"
FUTURE_TIMESTAMPS = "future_timestamps"
FUTURE_RATINGS = "future_ratings"
FUTURE_GENRE_IDS = "future_genre_ids"
FUTURE_GENRE_COUNTS = "future_genre_counts"

# User attributes are int64 scalars named ATTRIBUTE_PREFIX + name, holding a
# class index into metadata.json["attributes"][name]["classes"]; -1 = unknown.
ATTRIBUTE_PREFIX = "attr_"

SPLITS = ("train", "eval", "test")
SPLIT_DIR = "Split-{}"  # TFX ExampleGen layout
SCHEMA_FILE = "schema.pbtxt"
METADATA_FILE = "metadata.json"
VOCAB_DIR = "vocab"
ITEM_VOCAB_FILE = "items.txt"
GENRE_VOCAB_FILE = "genres.txt"
BAD_RECORDS_DIR = "bad_records"

# Keys of the batches `bt_tf.data.dataset.make_dataset` yields and the models read.
ITEMS = "items"  # int [B, L] right-padded histories (PAD_ID after the last item)
LENGTH = "length"  # int [B] history lengths
FUTURE_LENGTH = "future_length"  # int [B] future lengths
VIEW1 = "view1"  # int [B, L] first augmented view of the histories (Barlow Twins)
VIEW2 = "view2"  # int [B, L] second view

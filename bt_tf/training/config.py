"""The typed, frozen configuration of a training run (`TrainConfig`) and its JSON form.

A `TrainConfig` nests typed parts: ``data`` (`PreprocessConfig`), ``encoder``
(`EncoderConfig`), ``projector`` (`ProjectorConfig`, the layer widths) and
``augment`` (`AugmentPolicy`); the other settings are plain numbers, flags and
names. Strings such as ``"1024-1024-1024"`` or ``"mask:0.3,reorder:0.3"`` are
parsed once, where they enter: at the command line and in ``--hparams`` files
(`bt_tf.training.flags`, errors name the flag or the file and key), or when a
recorded ``config.json`` is read back (`TrainConfig.from_json`).

``config.json`` keeps its flat layout, one key per flag (``projector`` and
``augment`` as their flag strings, ``encoder_kind``, ``dim``, ...): `to_json`
writes it and `from_json` reads it back, from this version or an older one
(settings it lacks take the values such runs ran with, `LEGACY_DEFAULTS`).

Training length: every run trains until its validation objective (``val_loss``
on eval users: the model's own loss, BT / retrieval / joint, on fixed views and
cuts) has not improved by more than ``min_delta`` (relative) for
``early_stopping_patience`` epochs, and at most ``epochs`` epochs (flag
``--max_epochs``, old name ``--epochs``); the weights kept are those of the
epoch with the lowest val_loss. An epoch is ``steps_per_epoch`` steps, or one
pass over the train users but at least ``min_steps_per_epoch`` steps, so that
patience counts something on small datasets (ML-100K: ~750 train users, 2
batches of 256).

Defaults (cap 10 epochs, patience 3, min_delta 0.2%, epochs of >= 16 steps):
the synthetic default job stays a few minutes on 2 CPU cores (10 epochs of 18
steps), and ML-100K trains up to 160 steps instead of the former 16. The
val_loss is computed on fixed views, so it has no sampling noise and a short
patience suffices. Raise ``--max_epochs`` for large datasets; metrics.json's
``stop_reason`` says whether a run converged (``patience``) or hit the cap.

Pretraining users: ``train_users="train"`` trains the encoder on the histories of
the train split's users; ``"all"`` on those of every split (train, eval and test),
which suits a cross-fitted evaluation that scores every user: the downstream
labels are each user's FUTURE items, which no encoder reads. The epoch length
then counts the users of all splits (metadata.json's ``num_users``). Validation
(``val_loss``, early stopping) stays on the eval split; with ``"all"`` its users'
histories are trained on too (with other views), so val_loss then measures the
fit of the objective rather than its generalization to unseen users.

Item table: ``item_init="svd"`` starts the encoder's input item table from the
item factors of a rank-``dim`` truncated SVD of the binary user x item matrix of
the ``train_users``' histories (`bt_tf.training.trainer.svd_item_table`);
``freeze_item_embeddings`` keeps that table (random or SVD) fixed during
training. Both act when the model is built: a restored run reads its table from
its checkpoint. The DE's item side is that same table when tied (``tie_item_embeddings``,
the default), else a table of its own that neither setting touches.

No Apache Beam here: ``data`` is the Beam-free preprocessing config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from bt_tf.data.augment import AugmentPolicy
from bt_tf.data.dataset import parse_bucket_boundaries
from bt_tf.features import SPLITS
from bt_tf.modeling.encoders import KINDS as ENCODERS
from bt_tf.modeling.encoders import POOLINGS, POSITIONS
from bt_tf.modeling.precision import PRECISIONS
from bt_tf.modeling.projector import ProjectorConfig
from pipelines.config import PreprocessConfig

MODELS = ("bt", "de", "bt+de")
# How users' sequences are cut (see the module doc): "history_future" (users split by a
# hash into train / eval / test, each user's last `future_len` items its future: the
# downstream tasks' protocol) or "leave_one_out" (every user trains on all but its last
# two items, item n-1 validates, item n tests: SASRec's and RecBole's protocol).
PROTOCOLS = ("history_future", "leave_one_out")
# The DE loss (`bt_tf.modeling.dual_encoder`); "auto": full_softmax where its logits fit
# (`TrainConfig.resolved_de_loss`), else sampled_softmax.
DE_LOSSES = ("auto", "full_softmax", "sampled_softmax", "in_batch")
NEGATIVE_SAMPLERS = ("uniform", "popularity")
# "auto" keeps the full softmax while one step's logits, batch_size x max_len x items
# float32, stay under this many bytes (every MovieLens size at the default batches; the
# gradient doubles it): ML-1M 64 x 200 x 3.7k = 190 MB, 50k items at 256 x 200 = 10 GB.
FULL_SOFTMAX_MAX_BYTES = 1 << 30
# What validation judges epochs by: leave_one_out runs with an item side rank the
# validation item (item n-1) against the whole catalog (higher is better); every other
# run takes its own loss on eval users (lower is better).
VAL_NDCG = "val_ndcg@10"
VAL_LOSS = "val_loss"
TRAIN_USERS = ("train", "all")  # whose histories pretrain the encoder (see the module doc)
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
# The encoder's input item table at build time: Keras' random init, or the scaled item
# factors of a truncated SVD of the pretraining users' histories (`trainer.svd_item_table`).
ITEM_INITS = ("random", "svd")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The user-sequence encoder (the same class for every model), `SequenceEncoder`'s settings."""

    kind: str = "transformer"  # transformer | gru | mean (flag --encoder)
    dim: int = 64
    num_blocks: int = 2
    num_heads: int = 2
    dropout: float = 0.1
    pooling: str = "mean"  # mean | last
    ffn_dim: int = 0  # transformer feed-forward width; 0: 4 x dim (SASRec's is dim)
    positions: str = "start"  # start | end (right-aligned: SASRec's)
    scale_embeddings: bool = False  # item rows x sqrt(dim) before positions (SASRec's)

    def __post_init__(self):
        if self.kind not in ENCODERS:
            raise ValueError(f"--encoder={self.kind!r}: expected one of {ENCODERS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"--pooling={self.pooling!r}: expected one of {POOLINGS}")
        if self.positions not in POSITIONS:
            raise ValueError(f"--positions={self.positions!r}: expected one of {POSITIONS}")
        if self.ffn_dim < 0:
            raise ValueError("--ffn_dim must be >= 0 (0: 4 x --dim)")
        self._check_sizes()

    def _check_sizes(self) -> None:
        """The checks `SequenceEncoder` would fail on at build time, after preprocessing."""
        for flag, value, least in (
            ("dim", self.dim, 1),
            ("num_heads", self.num_heads, 1),
            ("num_blocks", self.num_blocks, 0),
        ):
            if value < least:
                raise ValueError(f"--{flag}={value}: expected an integer >= {least}")
        if self.kind == "transformer" and self.dim % self.num_heads:
            raise ValueError(
                f"--dim={self.dim} is not divisible by --num_heads={self.num_heads}: each "
                "attention head gets dim / num_heads dimensions"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout={self.dropout}: expected 0 <= dropout < 1")

    def kwargs(self, vocab_size: int, max_len: int, *, causal: bool) -> dict:
        """Keyword arguments of `bt_tf.modeling.encoders.SequenceEncoder` (config.json's
        ``encoder``)."""
        return {
            "vocab_size": vocab_size,
            "max_len": max_len,
            "dim": self.dim,
            "num_blocks": self.num_blocks,
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "kind": self.kind,
            "pooling": self.pooling,
            "ffn_dim": self.ffn_dim or None,
            "positions": self.positions,
            "scale_embeddings": self.scale_embeddings,
            "causal": causal,
        }


# The flat names (flags, config.json keys) of the encoder's fields.
ENCODER_FLAGS = {
    "encoder_kind": "kind",
    "dim": "dim",
    "num_blocks": "num_blocks",
    "num_heads": "num_heads",
    "dropout": "dropout",
    "pooling": "pooling",
    "ffn_dim": "ffn_dim",
    "positions": "positions",
    "scale_embeddings": "scale_embeddings",
}
DEFAULT_PROJECTOR = ProjectorConfig((1024, 1024, 1024))
DEFAULT_AUGMENT = AugmentPolicy(mask=0.3, reorder=0.3)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run; written (flat) to `<run_dir>/config.json`."""

    data: PreprocessConfig = PreprocessConfig()
    run_dir: str = ""  # default: runs/<dataset>_<model>
    model: str = "bt"  # "bt" (Barlow Twins), "de" (TFRS dual encoder), "bt+de" (joint)
    train_users: str = "train"  # "train": the train split's users; "all": every split's
    encoder: EncoderConfig = EncoderConfig()
    # the encoder's input item table: its init, and whether training updates it (the
    # DE's item side is this table when tied, else a table of its own)
    item_init: str = "random"  # random | svd (rank-dim SVD of the train_users' histories)
    freeze_item_embeddings: bool = False
    # Barlow Twins
    projector: ProjectorConfig = DEFAULT_PROJECTOR
    lambd: float = 0.005
    augment: AugmentPolicy = DEFAULT_AUGMENT
    protocol: str = "history_future"  # history_future | leave_one_out (PROTOCOLS)
    # the encoder's input width; 0: the data's max_len (leave_one_out stores complete
    # histories, so that every earlier item is excluded from the ranking, and reads the
    # --max_len most recent)
    input_len: int = 0
    # start the encoder from another run's (its best epoch), e.g. BT pretraining then DE
    init_from: str = ""
    # dual encoder / joint (causal query tower, every position a next-item query)
    de_loss: str = "auto"  # auto | full_softmax | sampled_softmax | in_batch
    num_negatives: int = 1000  # sampled_softmax: catalog draws per step
    negatives: str = "uniform"  # sampled_softmax: uniform | popularity (with logQ)
    tie_item_embeddings: bool = True  # the item tower IS the encoder's input table (SASRec)
    temperature: float = 0.1
    bt_weight: float = 0.1
    de_candidates: int = 0  # in_batch: shared candidates per step; 0: one per user
    # logQ correction of the in-batch softmax: without it, candidates drawn from the
    # batch's targets push popular items down and full-catalog HR@10 suffers.
    de_logq: bool = True
    # optimization
    batch_size: int = 256
    epochs: int = 10  # the cap: --max_epochs (alias --epochs)
    steps_per_epoch: int = 0  # 0: one pass over the train users, >= min_steps_per_epoch
    min_steps_per_epoch: int = 16  # floor of an automatic epoch (tiny datasets)
    learning_rate: float = 1e-3
    seed: int = 0
    strategy: str = "auto"
    jit_compile: bool = False
    early_stopping_patience: int = 3  # 0: off; else epochs without val_loss gain
    min_delta: float = 0.002  # a gain is val_loss < (1 - min_delta) × the reference
    # speed (None = the default, so runs written before these fields still resume)
    bucket_boundaries: str | None = None  # "25,50,100" | "auto" | "" (off); None: auto
    # for real datasets, off for synthetic (see `buckets`)
    cache_input: bool | None = None  # parse the data once into memory (implied by buckets)
    mixed_precision: str | None = None  # None = float32 | mixed_float16 | mixed_bfloat16
    steps_per_execution: int = 1  # train steps per tf.function call (Keras compile)
    # after training
    probe: bool = True
    export: bool = True
    score_test: bool = True  # leave_one_out: rank the test item after training

    def __post_init__(self):
        self._check_types()
        if self.model not in MODELS:
            raise ValueError(f"--model={self.model!r}: expected one of {MODELS}")
        if self.train_users not in TRAIN_USERS:
            raise ValueError(f"--train_users={self.train_users!r}: expected one of {TRAIN_USERS}")
        if self.item_init not in ITEM_INITS:
            raise ValueError(f"--item_init={self.item_init!r}: expected one of {ITEM_INITS}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy={self.strategy!r}: expected one of {STRATEGIES}")
        self._check_budget()
        self._check_protocol()
        for name, value, allowed in (
            ("de_loss", self.de_loss, DE_LOSSES),
            ("negatives", self.negatives, NEGATIVE_SAMPLERS),
        ):
            if value not in allowed:
                raise ValueError(f"--{name}={value!r}: expected one of {allowed}")
        if self.input_len < 0:
            raise ValueError("input_len must be >= 0 (0: the data's --max_len)")
        if self.num_negatives < 1:
            raise ValueError("--num_negatives must be >= 1")
        if self.de_candidates < 0:
            raise ValueError("--de_candidates must be >= 0 (0: one per user of the batch)")
        if self.temperature <= 0:
            raise ValueError("--temperature must be > 0")
        self._check_loss_and_step()
        self._check_speed()

    def _check_types(self) -> None:
        for name, kind in (
            ("encoder", EncoderConfig),
            ("projector", ProjectorConfig),
            ("augment", AugmentPolicy),
        ):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(
                    f"TrainConfig.{name} must be a {kind.__name__}, got "
                    f"{getattr(self, name)!r}; parse flag strings with "
                    "TrainConfig.from_settings (or bt_tf.training.flags.parse)."
                )

    def _check_loss_and_step(self) -> None:
        # A negative weight or step trains without an error and means nothing: refuse it.
        if not self.lambd > 0:
            raise ValueError(f"--lambd={self.lambd}: the off-diagonal weight must be > 0")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning_rate={self.learning_rate}: expected a value > 0")
        if not self.bt_weight >= 0:
            raise ValueError(f"--bt_weight={self.bt_weight}: expected a value >= 0")

    def _check_budget(self) -> None:
        if self.batch_size < 2:
            raise ValueError("--batch_size must be >= 2 (Barlow Twins standardizes over the batch)")
        if self.epochs < 1:
            raise ValueError("--max_epochs (--epochs) must be >= 1")
        if self.steps_per_epoch < 0 or self.min_steps_per_epoch < 1:
            raise ValueError("--steps_per_epoch must be >= 0 and --min_steps_per_epoch >= 1")
        if self.early_stopping_patience < 0 or not 0.0 <= self.min_delta < 1.0:
            raise ValueError("--early_stopping_patience must be >= 0 and 0 <= --min_delta < 1")

    def _check_protocol(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"--protocol={self.protocol!r}: expected one of {PROTOCOLS}")
        if self.protocol == "leave_one_out":
            d = self.data
            cut = (d.future_len, d.train_percent, d.eval_percent)
            if cut != (2, 100, 0):
                raise ValueError(
                    "--protocol=leave_one_out holds out each user's last 2 items and splits "
                    f"no users: it needs future_len=2, train_percent=100, eval_percent=0, got "
                    f"{cut} (build the data config with leave_one_out_data)"
                )
            if not self.input_len:
                raise ValueError("--protocol=leave_one_out needs input_len (the encoder's width)")
            if self.train_users != "train":
                raise ValueError("--protocol=leave_one_out trains every user: --train_users=train")

    def _check_speed(self) -> None:
        if self.mixed_precision not in (None, *PRECISIONS):
            raise ValueError(
                f"--mixed_precision={self.mixed_precision!r}: expected one of {PRECISIONS}"
            )
        if self.mixed_precision not in (None, "float32") and self.model != "bt":
            # DualEncoderModel.retrieval_terms mixes the 16-bit logits with a
            # float32 count; it needs float32 casts of its query and candidates.
            raise ValueError(
                f"--mixed_precision={self.mixed_precision} supports --model=bt only so far"
            )
        if self.steps_per_execution < 1:
            raise ValueError("--steps_per_execution must be >= 1")
        try:
            parse_bucket_boundaries(self.bucket_boundaries)
        except ValueError as err:
            raise ValueError(f"--{err}") from None

    # ----------------------------------------------------------------------
    # What the settings imply

    @property
    def uses_bt(self) -> bool:
        """Whether the model trains with the Barlow Twins loss ("bt", "bt+de")."""
        return "bt" in self.model.split("+")

    @property
    def uses_de(self) -> bool:
        """Whether the model has the dual encoder's retrieval loss ("de", "bt+de")."""
        return "de" in self.model.split("+")

    @property
    def leave_one_out(self) -> bool:
        return self.protocol == "leave_one_out"

    @property
    def monitor(self) -> str:
        """The validation figure that picks the best epoch and stops training: for a model
        with an item side, its validation item's full-ranking NDCG@10 (leave-one-out: item
        n-1; history/future: each trained user's last history item, held out of training,
        `hold_out`); for BT alone, its own loss on eval users."""
        return VAL_NDCG if self.uses_de else VAL_LOSS

    @property
    def hold_out(self) -> int:
        """History items per user held out of training for validation: the last one for a
        model with an item side in history/future (its validation item); none else
        (leave-one-out's validation item is in the stored future already)."""
        return 1 if self.uses_de and not self.leave_one_out else 0

    def resolved_de_loss(self, num_items: int) -> str:
        """`de_loss` with "auto" decided for a catalog of ``num_items`` ids: the full
        softmax while one step's logits fit `FULL_SOFTMAX_MAX_BYTES`, else sampled."""
        if self.de_loss != "auto":
            return self.de_loss
        fits = self.full_softmax_bytes(num_items) <= FULL_SOFTMAX_MAX_BYTES
        return "full_softmax" if fits else "sampled_softmax"

    def full_softmax_bytes(self, num_items: int) -> int:
        """Bytes of one step's full-softmax logits at most (batch x max_len x items,
        float32), what `resolved_de_loss` holds to `FULL_SOFTMAX_MAX_BYTES`."""
        return 4 * self.batch_size * self.max_len * num_items

    @property
    def max_epochs(self) -> int:
        """The epoch cap (stored as ``epochs``, the flag's old name)."""
        return self.epochs

    @property
    def train_splits(self) -> tuple[str, ...]:
        """The splits whose users' histories the encoder trains on (``train_users``)."""
        return SPLITS if self.train_users == "all" else ("train",)

    def num_train_users(self, num_users: Mapping[str, int]) -> int:
        """Users the encoder trains on, from metadata.json's per-split ``num_users``."""
        return sum(int(num_users[split]) for split in self.train_splits)

    def steps_for(self, num_train_users: int) -> int:
        """Optimizer steps per epoch on ``num_train_users`` users (`num_train_users`)."""
        if self.steps_per_epoch:
            return self.steps_per_epoch
        return max(self.min_steps_per_epoch, num_train_users // self.batch_size)

    @property
    def buckets(self) -> str:
        """`--bucket_boundaries` resolved: "auto" for real datasets, "" for synthetic."""
        if self.bucket_boundaries is not None:
            return self.bucket_boundaries
        return "" if self.data.dataset == "synthetic" else "auto"

    @property
    def max_len(self) -> int:
        """The encoder's input width: ``input_len``, else the data's ``max_len``."""
        return self.input_len or self.data.max_len

    def encoder_kwargs(self, vocab_size: int) -> dict:
        """Keyword arguments of `bt_tf.modeling.encoders.SequenceEncoder`.

        The DE (and BT+DE) query tower predicts the next item at every
        position: causal. BT alone stays bidirectional (`bt_tf.modeling.encoders`).
        """
        return self.encoder.kwargs(vocab_size, self.max_len, causal=self.uses_de)

    # ----------------------------------------------------------------------
    # Flat settings (flags, hparams, config.json)

    def to_json(self) -> dict:
        """config.json's settings: flat, one key per flag, in the order of the fields."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "encoder":
                out.update({flat: getattr(value, name) for flat, name in ENCODER_FLAGS.items()})
            elif field.name in ("projector", "augment"):
                out[field.name] = value.to_string()
            else:
                out[field.name] = dataclasses.asdict(value) if field.name == "data" else value
        return out

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], **typed) -> TrainConfig:
        """A config from flat settings (flag names; ``projector``/``augment`` may be strings).

        ``typed``: fields given as their typed values (``data=PreprocessConfig(...)``).
        Raises ValueError naming the flag of a bad value.
        """
        values = dict(settings)
        encoder = {name: values.pop(flat) for flat, name in ENCODER_FLAGS.items() if flat in values}
        for name, parse in (
            ("projector", ProjectorConfig.from_string),
            ("augment", AugmentPolicy.from_string),
        ):
            if isinstance(values.get(name), str):
                values[name] = parse_flag(name, values[name], parse)
        if encoder:
            values["encoder"] = EncoderConfig(**encoder)
        return cls(**values, **typed)

    @classmethod
    def from_json(cls, recorded: Mapping[str, Any]) -> TrainConfig:
        """The config of a run's config.json, from this version or an older one."""
        fields = {f.name for f in dataclasses.fields(cls)} | set(ENCODER_FLAGS)
        values = {k: v for k, v in {**LEGACY_DEFAULTS, **recorded}.items() if k in fields}
        data = _dataclass_from_json(PreprocessConfig, values.pop("data", {}))
        return cls.from_settings(values, data=data)


# History kept by a leave-one-out artifact: complete (a user with more is cut to the most
# recent), so that the ranking excludes every item a user had before, as SASRec's does.
LEAVE_ONE_OUT_HISTORY = 100_000


def leave_one_out_data(data: PreprocessConfig) -> PreprocessConfig:
    """``data`` cut for ``--protocol=leave_one_out``: every user in one split (the
    vocabulary then covers every user's training items), each user's last 2 items held
    out (item n-1 validates, item n tests), a history of at least 1 item, kept whole
    (`LEAVE_ONE_OUT_HISTORY`; the encoder reads its ``input_len`` most recent)."""
    return dataclasses.replace(
        data, future_len=2, min_history_len=1, train_percent=100, eval_percent=0,
        max_len=LEAVE_ONE_OUT_HISTORY,
    )  # fmt: skip


def parse_flag(flag: str, text: str, parse):
    """``parse(text)``, or ValueError ``--flag='text': why``."""
    try:
        return parse(text)
    except ValueError as err:
        raise ValueError(f"--{flag}={text!r}: {err}") from None


def _dataclass_from_json(cls, values: Mapping[str, Any]):
    """A (nested) dataclass from its `dataclasses.asdict` form (lists back to tuples)."""
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        value = values[field.name]
        default = getattr(cls(), field.name) if dataclasses.is_dataclass(cls) else None
        if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
            value = _dataclass_from_json(type(default), value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[field.name] = value
    return cls(**kwargs)


# Settings a resumed run may change without invalidating its checkpoints.
RESUMABLE_CHANGES = (
    "epochs",
    "probe",
    "export",
    "score_test",
    "early_stopping_patience",
    "min_delta",
    "strategy",
    "steps_per_execution",
)
# Values of settings that a run directory written before they existed ran with.
LEGACY_DEFAULTS = {
    "ffn_dim": 0,
    "positions": "start",
    "scale_embeddings": False,
    "protocol": "history_future",
    "input_len": 0,
    "init_from": "",
    "de_loss": "in_batch",
    "num_negatives": 1000,
    "negatives": "uniform",
    "tie_item_embeddings": False,
    "min_steps_per_epoch": 1,
    "min_delta": 0.0,
    "train_users": "train",
    "item_init": "random",
    "freeze_item_embeddings": False,
}


def comparable_settings(recorded: dict) -> dict:
    """A run's recorded settings (config.json), as compared to decide reuse.

    Settings missing from an older config.json take the value it ran with
    (`LEGACY_DEFAULTS`); ``min_steps_per_epoch`` is dropped when an explicit
    ``steps_per_epoch`` makes it irrelevant; ``projector`` and ``augment`` are
    compared in their canonical spelling (``"mask:0.30, reorder:0.3"`` is
    ``"mask:0.3,reorder:0.3"``).
    """
    out = {**LEGACY_DEFAULTS, **recorded}
    if out.get("steps_per_epoch"):
        out.pop("min_steps_per_epoch", None)
    for name, kind in (("projector", ProjectorConfig), ("augment", AugmentPolicy)):
        try:
            out[name] = kind.from_string(out[name]).to_string()
        except (KeyError, TypeError, ValueError, AttributeError):
            pass  # missing or unreadable: compared as recorded
    return out

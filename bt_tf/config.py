"""The frozen configuration of a training run, and its command-line flags.

Flags are parsed only by entry points (`bt_tf.train`, `tuning.search`); the
library takes a `TrainConfig`. `--hparams=FILE.json` (as written by the tuner)
overrides flags: its keys are flag names without dashes.

Training length: every run trains until its validation objective (``val_loss``
on eval users: the model's own loss, BT / retrieval / joint, on fixed views and
cuts) has not improved by more than ``--min_delta`` (relative) for
``--early_stopping_patience`` epochs, and at most ``--max_epochs`` epochs; the
weights kept are those of the epoch with the lowest val_loss. ``--epochs`` is
the old name of ``--max_epochs`` and still works, on the command line and as
``"epochs"`` in hparams files; the field (and ``config.json`` key) is
``epochs``. An epoch is ``--steps_per_epoch`` steps, or one pass over the train
users but at least ``--min_steps_per_epoch`` steps, so that patience counts
something on small datasets (ML-100K: ~750 train users, 2 batches of 256).

Defaults (cap 10 epochs, patience 3, min_delta 0.2%, epochs of >= 16 steps):
the synthetic default job stays a few minutes on 2 CPU cores (10 epochs of 18
steps), and ML-100K trains up to 160 steps instead of the former 16. The
val_loss is computed on fixed views, so it has no sampling noise and a short
patience suffices. Raise ``--max_epochs`` for large datasets; metrics.json's
``stop_reason`` says whether a run converged (``patience``) or hit the cap.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Sequence

from bt_tf import augment as aug
from bt_tf import cli, encoders
from bt_tf.errors import UserError
from pipelines import preprocess as pp

MODELS = ("bt", "de", "bt+de")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
ENCODERS = encoders.KINDS
POOLINGS = encoders.POOLINGS


def check_projector(spec: str) -> str:
    """A `--projector` value ("1024-1024-1024"), or ValueError saying what is wrong."""
    encoders.parse_projector_spec(spec)
    return spec


def check_augment(spec: str) -> str:
    """An `--augment` value ("mask:0.3,reorder:0.3"), or ValueError saying what is wrong."""
    aug.AugmentPolicy.from_string(spec)
    return spec


def check_buckets(spec: str) -> str:
    """A `--bucket_boundaries` value ("auto", "" or "25,50,100"), or ValueError."""
    from bt_tf.input import parse_bucket_boundaries

    parse_bucket_boundaries(spec)
    return spec


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run; written to `<run_dir>/config.json`."""

    data: pp.PreprocessConfig = pp.PreprocessConfig()
    run_dir: str = ""  # default: runs/<dataset>_<model>
    model: str = "bt"  # "bt" (Barlow Twins), "de" (TFRS dual encoder), "bt+de" (joint)
    # encoder (the same class for every model)
    encoder_kind: str = "transformer"  # transformer | gru | mean (flag --encoder)
    dim: int = 64
    num_blocks: int = 2
    num_heads: int = 2
    dropout: float = 0.1
    pooling: str = "mean"  # mean | last
    # Barlow Twins
    projector: str = "1024-1024-1024"
    lambd: float = 0.005
    augment: str = "mask:0.3,reorder:0.3"
    # dual encoder / joint (causal query tower, every position a next-item query)
    temperature: float = 0.1
    bt_weight: float = 0.1
    de_candidates: int = 0  # shared sampled-softmax candidates per step; 0: one per user
    # logQ correction of the sampled softmax: without it, candidates drawn from the
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

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"--model={self.model!r}: expected one of {MODELS}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy={self.strategy!r}: expected one of {STRATEGIES}")
        if self.batch_size < 2:
            raise ValueError("--batch_size must be >= 2 (Barlow Twins standardizes over the batch)")
        if self.epochs < 1:
            raise ValueError("--max_epochs (--epochs) must be >= 1")
        if self.steps_per_epoch < 0 or self.min_steps_per_epoch < 1:
            raise ValueError("--steps_per_epoch must be >= 0 and --min_steps_per_epoch >= 1")
        if self.early_stopping_patience < 0 or not 0.0 <= self.min_delta < 1.0:
            raise ValueError("--early_stopping_patience must be >= 0 and 0 <= --min_delta < 1")
        if self.encoder_kind not in ENCODERS:
            raise ValueError(f"--encoder={self.encoder_kind!r}: expected one of {ENCODERS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"--pooling={self.pooling!r}: expected one of {POOLINGS}")
        for flag, check in (("projector", check_projector), ("augment", check_augment)):
            try:
                check(getattr(self, flag))
            except ValueError as err:
                raise ValueError(f"--{flag}={getattr(self, flag)!r}: {err}") from None

        if self.de_candidates < 0:
            raise ValueError("--de_candidates must be >= 0 (0: one per user of the batch)")
        if self.temperature <= 0:
            raise ValueError("--temperature must be > 0")
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
        from bt_tf.input import parse_bucket_boundaries

        try:
            parse_bucket_boundaries(self.bucket_boundaries)
        except ValueError as err:
            raise ValueError(f"--{err}") from None

    @property
    def max_epochs(self) -> int:
        """The epoch cap (stored as ``epochs``, the flag's old name)."""
        return self.epochs

    def steps_for(self, num_train_users: int) -> int:
        """Optimizer steps per epoch on ``num_train_users`` train users."""
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
        return self.data.max_len

    def encoder_kwargs(self, vocab_size: int) -> dict:
        """Keyword arguments of `bt_tf.encoders.SequenceEncoder`."""
        return {
            "vocab_size": vocab_size,
            "max_len": self.max_len,
            "dim": self.dim,
            "num_blocks": self.num_blocks,
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "kind": self.encoder_kind,
            "pooling": self.pooling,
            # The DE (and BT+DE) query tower predicts the next item at every
            # position: causal. BT alone stays bidirectional (bt_tf.encoders).
            "causal": "de" in self.model.split("+"),
        }

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# Command-line defaults per dataset (explicit flags and --hparams still win).
# The recipe chosen on ML-100K (see README, "Results"): shorter histories (the
# most recent 50 items: faster steps, and the recent past is what predicts the
# future), small batches with many steps, a 512-512 projector, and crop views.
# The larger MovieLens sets keep the same recipe with longer histories.
_MOVIELENS_RECIPE = {
    "batch_size": 64,
    "projector": "512-512",
    "augment": "crop:0.6,mask:0.2,reorder:0.2",
}
DATASET_DEFAULTS: dict[str, dict] = {
    "ml-100k": {**_MOVIELENS_RECIPE, "max_len": 50, "epochs": 30},
    "ml-1m": {**_MOVIELENS_RECIPE, "max_len": 100, "epochs": 30},
    "ml-20m": {**_MOVIELENS_RECIPE, "max_len": 100, "batch_size": 256},
}


def dataset_defaults(dataset: str) -> dict:
    """Flag defaults of `dataset` (flag names without dashes), ``{}`` when none."""
    return dict(DATASET_DEFAULTS.get(dataset, {}))


# Settings a resumed run may change without invalidating its checkpoints.
RESUMABLE_CHANGES = (
    "epochs",
    "probe",
    "export",
    "early_stopping_patience",
    "min_delta",
    "strategy",
    "steps_per_execution",
)
# Values of settings that a run directory written before they existed ran with.
LEGACY_DEFAULTS = {"min_steps_per_epoch": 1, "min_delta": 0.0}
# hparams-file keys that name another flag.
HPARAMS_ALIASES = {"max_epochs": "epochs"}


def comparable_settings(recorded: dict) -> dict:
    """A run's recorded settings (config.json), as compared to decide reuse.

    Settings missing from an older config.json take the value it ran with
    (`LEGACY_DEFAULTS`); ``min_steps_per_epoch`` is dropped when an explicit
    ``steps_per_epoch`` makes it irrelevant.
    """
    out = {**LEGACY_DEFAULTS, **recorded}
    if out.get("steps_per_epoch"):
        out.pop("min_steps_per_epoch", None)
    return out


def flag_type(check):
    """An argparse ``type`` from a check raising ValueError (the message names the flag)."""

    def parse(text: str):
        try:
            return check(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = check.__name__
    return parse


def check_hparams_file(path: str) -> str:
    """An `--hparams` file that exists and holds a JSON object (its keys are checked later)."""
    try:
        read_hparams(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, not a JSON file") from None
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}, line {err.lineno} column {err.colno}: not valid JSON ({err.msg})"
        ) from None
    return path


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The training flags (`bt_tf.train`), preprocessing flags included."""
    pp.add_flags(parser, output_dir_alias=False)
    d = TrainConfig()
    add = parser.add_argument
    add(
        "--output_dir",
        dest="run_dir",
        default="",
        help="the run directory (empty: runs/<dataset>_<model>)",
    )
    add(
        "--model",
        default=d.model,
        choices=MODELS,
        help="bt: Barlow Twins; de: TFRS dual encoder (next item); bt+de: both losses",
    )
    add(
        "--encoder",
        dest="encoder_kind",
        default=d.encoder_kind,
        choices=ENCODERS,
        help="user-sequence encoder",
    )
    add("--dim", type=int, default=d.dim, help="encoder width (item embeddings and output)")
    add("--num_blocks", type=int, default=d.num_blocks, help="transformer blocks or GRU layers")
    add("--num_heads", type=int, default=d.num_heads, help="attention heads per transformer block")
    add("--dropout", type=float, default=d.dropout, help="encoder dropout rate")
    add("--pooling", default=d.pooling, choices=POOLINGS, help="user vector from the positions")
    add(
        "--projector",
        type=flag_type(check_projector),
        default=d.projector,
        help="BT projector MLP widths, dash-separated",
    )
    add("--lambd", type=float, default=d.lambd, help="BT weight of the off-diagonal term")
    add(
        "--augment",
        type=flag_type(check_augment),
        default=d.augment,
        help="BT views: comma-separated name:strength of mask, reorder, crop, substitute, "
        "insert, apply_prob (none: identical views)",
    )
    add(
        "--temperature",
        type=float,
        default=d.temperature,
        help="DE softmax temperature (scores / temperature)",
    )
    add("--bt_weight", type=float, default=d.bt_weight, help="weight of the BT loss in bt+de")
    add(
        "--batch_size",
        type=int,
        default=d.batch_size,
        help="GLOBAL batch (users per step, split over replicas; BT statistics over all of it)",
    )
    add(
        "--max_epochs",
        "--epochs",
        dest="epochs",
        type=int,
        default=d.epochs,
        help="cap on epochs (training stops earlier when val_loss stops improving); "
        "--epochs is its old name",
    )
    add(
        "--steps_per_epoch",
        type=int,
        default=d.steps_per_epoch,
        help="optimizer steps per epoch (0: one pass over the train users)",
    )
    add(
        "--min_steps_per_epoch",
        type=int,
        default=d.min_steps_per_epoch,
        help="floor of steps per epoch when --steps_per_epoch=0 (one pass)",
    )
    add("--learning_rate", type=float, default=d.learning_rate, help="Adam learning rate")
    add("--seed", type=int, default=d.seed, help="seeds weights, shuffles, views and probes")
    add(
        "--strategy",
        default=d.strategy,
        choices=STRATEGIES,
        help="tf.distribute strategy (auto: mirrored over GPUs if > 1; multi_worker reads "
        "TF_CONFIG; tpu is untested)",
    )
    add(
        "--early_stopping_patience",
        type=int,
        default=d.early_stopping_patience,
        help="stop after this many epochs without a val_loss gain (0: train --max_epochs)",
    )
    add(
        "--min_delta",
        type=float,
        default=d.min_delta,
        help="relative val_loss decrease that counts as a gain for the patience",
    )
    add(
        "--bucket_boundaries",
        type=flag_type(check_buckets),
        default=d.bucket_boundaries,
        help='length buckets of the batches: "25,50,100,150", "auto" (length quantiles) or '
        '"" (off); default (None): auto for real datasets, off for synthetic',
    )
    boolean = argparse.BooleanOptionalAction
    add(
        "--cache_input",
        default=d.cache_input,
        action=boolean,
        help="parse the split once into memory (implied by --bucket_boundaries)",
    )
    add(
        "--mixed_precision",
        default=d.mixed_precision,
        choices=PRECISIONS,
        help="Keras mixed-precision policy (the BT loss stays float32; --model=bt only)",
    )
    add(
        "--steps_per_execution",
        type=int,
        default=d.steps_per_execution,
        help="train steps per tf.function call (fewer Python round trips)",
    )
    add(
        "--de_candidates",
        type=int,
        default=d.de_candidates,
        help="DE: shared sampled-softmax candidates per step (0: one per user of the batch)",
    )
    add(
        "--de_logq",
        default=d.de_logq,
        action=boolean,
        help="DE: logQ correction of the sampled softmax",
    )
    add("--jit_compile", default=d.jit_compile, action=boolean, help="XLA-compile the train step")
    add("--probe", default=d.probe, action=boolean, help="favorite-genre probe after training")
    add("--export", default=d.export, action=boolean, help="export the encoder as a SavedModel")
    add(
        "--hparams",
        type=flag_type(check_hparams_file),
        default=None,
        metavar="FILE",
        help="JSON object of flag values (names without dashes, e.g. a tuner's "
        "best_hparams.json); overrides the flags",
    )


def read_hparams(path: str) -> dict:
    """An hparams file: {flag name (without dashes): value}; aliases resolved."""
    with open(os.path.expanduser(path)) as f:
        values = json.load(f)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object of flag names to values")
    both = [k for k, v in HPARAMS_ALIASES.items() if k in values and v in values]
    if both:
        raise ValueError(f"{path}: sets both {both[0]!r} and {HPARAMS_ALIASES[both[0]]!r}")
    return {HPARAMS_ALIASES.get(k, k): v for k, v in values.items()}


# Flags that are not settings of the run, never taken from an hparams file.
_NOT_HPARAMS = ("hparams", "verbose")


def _hparam_value(path: str, key: str, value, current):
    """`value` of hparams key `key`, of the type of the flag's `current` value, checked."""
    where = f"{path}: {key!r}"
    if isinstance(current, bool) or current is None and isinstance(value, bool):
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise UserError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} must be a number, got {value!r}")
        return float(value)
    if isinstance(current, str) and not isinstance(value, str):
        raise UserError(f"{where} must be a string, got {value!r}")
    check = {"projector": check_projector, "augment": check_augment}.get(key)
    if check is not None:
        try:
            check(value)
        except ValueError as err:
            raise UserError(f"{where}: {err}") from None
    return value


def _apply_hparams(args: argparse.Namespace, path: str) -> None:
    try:
        values = read_hparams(path)
    except (OSError, ValueError) as err:
        raise UserError(f"--hparams={path}: {err}") from None
    unknown = sorted(k for k in values if not hasattr(args, k) or k in _NOT_HPARAMS)
    if unknown:
        known = sorted(k for k in vars(args) if k not in _NOT_HPARAMS)
        raise UserError(f"{path}: unknown flags {unknown}; known: {known}")
    for key, value in values.items():
        setattr(args, key, _hparam_value(path, key, value, getattr(args, key)))


def config_from_flags(
    args: argparse.Namespace, beam_args: Sequence[str] = (), hparams: Sequence[str] = ()
) -> TrainConfig:
    """The config of parsed flags; ``--hparams`` and then each file of ``hparams`` override.

    Raises `UserError` (naming the flag or the hparams file) for bad values.
    """
    args = argparse.Namespace(**vars(args))  # the caller's namespace stays as parsed
    for path in ([args.hparams] if args.hparams else []) + list(hparams):
        _apply_hparams(args, path)
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"data"}
    values = {k: v for k, v in vars(args).items() if k in fields}
    if not values.get("run_dir"):
        values["run_dir"] = os.path.join("runs", f"{args.dataset}_{args.model}")
    data = pp.config_from_flags(args, beam_args)
    try:
        return TrainConfig(data=data, **values)
    except UserError:
        raise
    except ValueError as err:
        raise UserError(str(err)) from None


def build_parser(
    argv: Sequence[str] | None = None, *, prog: str | None = None, description: str = ""
) -> argparse.ArgumentParser:
    """The parser of the training flags, with the defaults of the ``--dataset`` in `argv`."""
    parser = cli.ArgumentParser(
        prog=prog or "python -m bt_tf.train",
        usage="%(prog)s [--flag=VALUE ...]",
        description=description,
        epilog="Any other --flag is passed to Beam (preprocessing), e.g. --runner=...",
        allow_abbrev=True,
    )
    add_flags(parser)
    apply_dataset_defaults(parser, argv)
    return parser


def parse(
    argv: Sequence[str] | None = None,
    description: str = "",
    hparams: Sequence[str] = (),
    *,
    prog: str | None = None,
) -> TrainConfig:
    """Command line -> config (``hparams``: extra files applied after ``--hparams``).

    Unknown flags are Beam options. Raises `UserError` naming the flag for a bad value.
    """
    parser = build_parser(argv, prog=prog, description=description)
    args, beam_args = parser.parse_known_args(argv)
    return config_from_flags(args, beam_args, hparams)


def apply_dataset_defaults(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> str:
    """Sets `parser`'s defaults to those of the ``--dataset`` in `argv`; returns its name."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--dataset", default=pp.PreprocessConfig().dataset)
    dataset = probe.parse_known_args(argv)[0].dataset
    parser.set_defaults(**dataset_defaults(dataset))
    return dataset

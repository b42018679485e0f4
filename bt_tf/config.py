"""The frozen configuration of a training run, and its command-line flags.

Flags are parsed only by entry points (`bt_tf.train`, `tuning.search`); the
library takes a `TrainConfig`. `--hparams=FILE.json` (as written by the tuner)
overrides flags: its keys are flag names without dashes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Sequence

from pipelines import preprocess as pp

MODELS = ("bt", "de", "bt+de")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


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
    # dual encoder / joint
    temperature: float = 0.1
    bt_weight: float = 0.1
    # optimization
    batch_size: int = 256
    epochs: int = 8
    steps_per_epoch: int = 0  # 0: one pass over the train users
    learning_rate: float = 1e-3
    seed: int = 0
    strategy: str = "auto"
    jit_compile: bool = False
    early_stopping_patience: int = 0  # 0: off; else epochs without val_loss gain
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
            raise ValueError("--epochs must be >= 1")
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
        }

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# Settings a resumed run may change without invalidating its checkpoints.
RESUMABLE_CHANGES = (
    "epochs",
    "probe",
    "export",
    "early_stopping_patience",
    "strategy",
    "steps_per_execution",
)


def add_flags(parser: argparse.ArgumentParser) -> None:
    pp.add_flags(parser, output_dir_alias=False)
    d = TrainConfig()
    parser.add_argument("--output_dir", dest="run_dir", default="", help="the run directory")
    parser.add_argument("--model", default=d.model, choices=MODELS)
    parser.add_argument(
        "--encoder",
        dest="encoder_kind",
        default=d.encoder_kind,
        choices=("transformer", "gru", "mean"),
    )
    for name in ("dim", "num_blocks", "num_heads", "batch_size", "epochs", "steps_per_epoch"):
        parser.add_argument(f"--{name}", type=int, default=getattr(d, name))
    parser.add_argument("--seed", type=int, default=d.seed)
    for name in ("dropout", "lambd", "temperature", "bt_weight", "learning_rate"):
        parser.add_argument(f"--{name}", type=float, default=getattr(d, name))
    parser.add_argument("--pooling", default=d.pooling, choices=("mean", "last"))
    parser.add_argument(
        "--projector", default=d.projector, help='MLP widths, e.g. "1024-1024-1024"'
    )
    parser.add_argument("--augment", default=d.augment, help='e.g. "mask:0.3,reorder:0.3,crop:0.8"')
    parser.add_argument("--strategy", default=d.strategy, choices=STRATEGIES)
    parser.add_argument("--early_stopping_patience", type=int, default=d.early_stopping_patience)
    parser.add_argument(
        "--bucket_boundaries",
        default=d.bucket_boundaries,
        help='length buckets of the batches: "25,50,100,150", "auto" (length quantiles) or '
        '"" (off); default: auto for real datasets, off for synthetic',
    )
    parser.add_argument(
        "--cache_input",
        default=d.cache_input,
        action=argparse.BooleanOptionalAction,
        help="parse the split once into memory (implied by --bucket_boundaries)",
    )
    parser.add_argument(
        "--mixed_precision",
        default=d.mixed_precision,
        choices=PRECISIONS,
        help="Keras mixed-precision policy (the BT loss stays float32)",
    )
    parser.add_argument("--steps_per_execution", type=int, default=d.steps_per_execution)
    for name in ("jit_compile", "probe", "export"):
        parser.add_argument(
            f"--{name}", default=getattr(d, name), action=argparse.BooleanOptionalAction
        )
    parser.add_argument("--hparams", default=None, help="JSON file of flag values; overrides flags")


def _apply_hparams(args: argparse.Namespace, path: str) -> None:
    with open(os.path.expanduser(path)) as f:
        values = json.load(f)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object of flag names to values")
    unknown = sorted(k for k in values if not hasattr(args, k) or k == "hparams")
    if unknown:
        raise ValueError(f"{path}: unknown flags {unknown}; known: {sorted(vars(args))}")
    for key, value in values.items():
        setattr(args, key, value)


def config_from_flags(args: argparse.Namespace, beam_args: Sequence[str] = ()) -> TrainConfig:
    if args.hparams:
        _apply_hparams(args, args.hparams)
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"data"}
    values = {k: v for k, v in vars(args).items() if k in fields}
    if not values.get("run_dir"):
        values["run_dir"] = os.path.join("runs", f"{args.dataset}_{args.model}")
    return TrainConfig(data=pp.config_from_flags(args, beam_args), **values)


def parse(argv: Sequence[str] | None = None, description: str = "") -> TrainConfig:
    parser = argparse.ArgumentParser(
        description=description, epilog="Other --flags are passed to Beam (preprocessing)."
    )
    add_flags(parser)
    args, beam_args = parser.parse_known_args(argv)
    return config_from_flags(args, beam_args)

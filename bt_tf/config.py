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
    epochs: int = 8
    steps_per_epoch: int = 0  # 0: one pass over the train users
    learning_rate: float = 1e-3
    seed: int = 0
    strategy: str = "auto"
    jit_compile: bool = False
    early_stopping_patience: int = 0  # 0: off; else epochs without val_loss gain
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
        if self.de_candidates < 0:
            raise ValueError("--de_candidates must be >= 0 (0: one per user of the batch)")
        if self.temperature <= 0:
            raise ValueError("--temperature must be > 0")

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


# Settings a resumed run may change without invalidating its checkpoints.
RESUMABLE_CHANGES = ("epochs", "probe", "export", "early_stopping_patience", "strategy")


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
    for name in ("jit_compile", "probe", "export"):
        parser.add_argument(
            f"--{name}", default=getattr(d, name), action=argparse.BooleanOptionalAction
        )
    parser.add_argument(
        "--de_candidates",
        type=int,
        default=d.de_candidates,
        help="DE: shared sampled-softmax candidates per step (0: one per user of the batch)",
    )
    parser.add_argument(
        "--de_logq",
        default=d.de_logq,
        action=argparse.BooleanOptionalAction,
        help="DE: logQ correction of the sampled softmax",
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

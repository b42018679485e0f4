"""The command-line flags of a training run, and ``--hparams`` files: strings -> `TrainConfig`.

Flags are parsed only by entry points (`bt_tf.train`, `bt_tf.reproduce`,
`tuning.search`); the library takes a `TrainConfig`. ``--hparams=FILE.json``
(as written by the tuner) overrides flags: its keys are flag names without
dashes. Structured values (``--projector``, ``--augment``) are parsed here,
once, into their typed form; a bad value gives an error naming the flag (or
the hparams file and key). ``--epochs`` is the old name of ``--max_epochs``
and still works, on the command line and as ``"epochs"`` in hparams files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Sequence

from bt_tf import cli
from bt_tf.data.augment import AugmentPolicy
from bt_tf.data.dataset import parse_bucket_boundaries
from bt_tf.errors import UserError
from bt_tf.modeling.precision import PRECISIONS
from bt_tf.modeling.projector import ProjectorConfig
from bt_tf.training.config import (
    DE_LOSSES,
    ENCODER_FLAGS,
    ENCODERS,
    ITEM_INITS,
    MODELS,
    NEGATIVE_SAMPLERS,
    POOLINGS,
    PROTOCOLS,
    STRATEGIES,
    TRAIN_USERS,
    TrainConfig,
    leave_one_out_data,
)
from pipelines import config as data_config


def check_buckets(spec: str) -> str:
    """A `--bucket_boundaries` value ("auto", "" or "25,50,100"), or ValueError."""
    parse_bucket_boundaries(spec)
    return spec


# Flags whose strings become typed values, and their parsers.
STRUCTURED = {"projector": ProjectorConfig.from_string, "augment": AugmentPolicy.from_string}


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


def _de_recipe(batch_size: int) -> dict:
    """The DE's own recipe, chosen like BT's: on ML-100K's train + eval users (the test
    split unread), each variant of (batch size, temperature, learning rate, pooling,
    logQ) trained with 2 seeds at the same budget and probed by the cross-fitted
    protocol, `tuning.compare` (docs/RESULTS.md, "The DE's recipe"). No variant was
    ahead of batch 64, temperature 0.1, learning rate 1e-3, mean pooling with logQ on
    any of the three tasks at 5-10% labels; six were behind on at least one. ML-1M and
    ML-20M keep the same values, unmeasured (their data is not on these machines)."""
    return {
        "batch_size": batch_size,
        # 0.1 was chosen for the in-batch softmax; the full-softmax DE (issue 22) does
        # better at 1.0 on its validation item (ML-100K train users' last history item,
        # best val NDCG@10 0.098 at 1.0 against 0.083 at 0.1; no claim label read).
        # BT+DE keeps the shared 0.1: at 1.0 its cross-entropy is 10x weaker beside the
        # BT term (bt_weight 0.1) and its validation NDCG@10 fell from 0.073 to 0.042
        # (2 seeds each, ML-100K).
        "temperature": 1.0,
        "learning_rate": 1e-3,
        "pooling": "mean",
        "de_logq": True,
    }


# The budget's stopping rule for MovieLens (shared by every model, `bt_tf.reproduce`).
# Until issue 22 it was "train the 30-epoch cap, keep the best val_loss epoch", chosen on
# the claim labels of ML-100K's train + eval users because the DE's sampled val_loss was
# noisy (docs/RESULTS.md, "The stopping rule").
# Issue 22: the full-softmax DE still gained on its validation item at epoch 30 (and BT's
# best val_loss epoch was its last), so the cap bound them both. MovieLens now trains up to
# 50 epochs and stops after 10 without gain, keeping the best epoch (the DE judged by its
# validation item's NDCG@10, which is not noisy like its old sampled val_loss).
_LONGER_CAP = {"epochs": 50, "early_stopping_patience": 10}

# Under MODELS_KEY: a model's own defaults ("bt", "de", "bt+de"), on top of the
# dataset's shared ones; model settings only (no data flags: every model of a
# comparison reads the same data; bt_tf.reproduce also keeps the budget shared).
MODELS_KEY = "models"
DATASET_DEFAULTS: dict[str, dict] = {
    "ml-100k": {
        **_MOVIELENS_RECIPE,
        "max_len": 50,
        **_LONGER_CAP,
        MODELS_KEY: {"de": _de_recipe(64)},
    },
    "ml-1m": {
        **_MOVIELENS_RECIPE,
        "max_len": 100,
        **_LONGER_CAP,
        MODELS_KEY: {"de": _de_recipe(64)},
    },
    "ml-20m": {
        **_MOVIELENS_RECIPE,
        "max_len": 100,
        "batch_size": 256,
        MODELS_KEY: {"de": _de_recipe(256)},
    },
}


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Whose labels chose a default of `DATASET_DEFAULTS`: the evaluation compares it to
    the users it scores (`bt_tf.evaluation.selection`; the claim's ``selection``).

    Attributes:
        chose: what was chosen, in words.
        settings: flag name -> the chosen value (a run whose config holds one of
            them used the choice).
        models: the models whose default it is (`config.MODELS`: every model).
        dataset: the data whose users' labels chose it (``--dataset``).
        splits: those users' splits, under ``split_percents`` (the preprocessing's
            ``train_percent``, ``eval_percent``: a user's split is a hash of the id).
        labels: the tasks whose labels were read.
        how: the method, and where its figures are.
    """

    chose: str
    settings: dict
    models: tuple[str, ...]
    dataset: str
    splits: tuple[str, ...]
    split_percents: tuple[int, int]
    labels: tuple[str, ...]
    how: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_CLAIM_LABELS = ("next_item", "favorite_genre", "liked_item")  # tasks.CLAIM_METRICS
_ML100K_TRAIN_EVAL = dict(dataset="ml-100k", splits=("train", "eval"), split_percents=(80, 10))


def _recipe_provenance(settings: dict) -> Provenance:
    return Provenance(
        chose="the MovieLens recipe (batch 64, projector 512-512, crop views; histories of "
        "50 on ML-100K)",
        settings=settings,
        models=MODELS,
        labels=("favorite_genre", "attr_gender"),
        how="BT variants, 5-fold cross-validation of logistic-regression probes on the "
        "train + eval users (docs/RESULTS.md, 'How the recipe was chosen')",
        **_ML100K_TRAIN_EVAL,
    )


def _de_provenance(settings: dict) -> Provenance:
    return Provenance(
        chose="the DE's recipe (learning rate 1e-3, mean pooling, logQ; batch 64)",
        settings=settings,
        models=("de",),
        labels=_CLAIM_LABELS,
        how="tuning.compare, one setting changed per variant, 2 pretraining seeds, probes "
        "cross-fitted over the 848 train + eval users at 5-10% labels (docs/RESULTS.md, "
        "'The DE's recipe')",
        **_ML100K_TRAIN_EVAL,
    )


_RECIPE_SETTINGS = {k: _MOVIELENS_RECIPE[k] for k in ("batch_size", "projector", "augment")}
# The temperature is no longer the one chosen on labels (see `_de_recipe`).
_DE_SETTINGS = {k: v for k, v in _de_recipe(64).items() if k != "temperature"}

# Per DATASET_DEFAULTS entry: whose labels chose its values (`Provenance`). Every
# results.json copies the entries a run used, and the claim says whether any scored
# user's labels took part (in-sample) or none did (out-of-sample). A new default chosen
# on labels gets its entry here; choose it on users the claim is never scored on
# (e.g. ML-100K's train + eval users, then score the claim with --claim_users=test).
DEFAULTS_PROVENANCE: dict[str, tuple[Provenance, ...]] = {
    "ml-100k": (
        _recipe_provenance({**_RECIPE_SETTINGS, "max_len": 50}),
        _de_provenance(_DE_SETTINGS),
    ),
    "ml-1m": (
        _recipe_provenance(_RECIPE_SETTINGS),
        _de_provenance(_DE_SETTINGS),
    ),
    "ml-20m": (  # batch 256 there: not chosen on labels
        _recipe_provenance({k: v for k, v in _RECIPE_SETTINGS.items() if k != "batch_size"}),
        _de_provenance({k: v for k, v in _DE_SETTINGS.items() if k != "batch_size"}),
    ),
}


def dataset_provenance(dataset: str) -> tuple[Provenance, ...]:
    """`DEFAULTS_PROVENANCE` of ``dataset`` (none for data without chosen defaults)."""
    return DEFAULTS_PROVENANCE.get(dataset, ())


# SASRec's architecture and schedule (Kang & McAuley 2018: 2 blocks, 1 head, feed-forward
# as wide as the model, dropout 0.2, positions counted from the end, item rows scaled by
# sqrt(dim), the last position's state, Adam 1e-3, batch 128, inputs of 200) trained with
# SASRec+'s full softmax cross-entropy at temperature 1; d = 64 (SASRec's 50, rounded up to
# the project's). The epoch is chosen, and training stopped, on the validation item's
# full-ranking NDCG@10 (20 epochs without gain, at most 200). Taken from the literature, not
# chosen on any labels here; on ML-100K it gives the figures of docs/RESULTS.md, "The DE
# in leave-one-out". Pooling was checked on the validation item only: the running mean
# reached val NDCG@10 0.076 by epoch 42 where `last` was at 0.104 (peak 0.108). Every
# model of a leave-one-out comparison shares it (bt_ft starts the DE from BT's encoder,
# which needs the same encoder).
_SASREC_RECIPE = {
    "batch_size": 128,
    "dim": 64,
    "num_blocks": 2,
    "num_heads": 1,
    "ffn_dim": 64,
    "dropout": 0.2,
    "positions": "end",
    "scale_embeddings": True,
    "pooling": "last",
    "learning_rate": 1e-3,
    "temperature": 1.0,
    "epochs": 200,
    "early_stopping_patience": 20,
    "min_steps_per_epoch": 1,  # an epoch is one pass over the users, as in SASRec
}
# Flag defaults of a protocol, on top of a dataset's (`dataset_defaults`). Leave-one-out
# holds out 2 items per user and reads SASRec's input length (200).
PROTOCOL_DEFAULTS: dict[str, dict] = {
    "leave_one_out": {
        "future_len": 2,
        "min_history_len": 1,
        "max_len": 200,
        **_SASREC_RECIPE,
        # BT-SR's weight, chosen on ML-100K's validation items (no test item read): at 0.1
        # and 0.01 the BT term (hundreds, 512-wide projector) swamps the cross-entropy,
        # which stays near log(catalog) (val NDCG@10 0.008 at epoch 15 and 0.011 at epoch
        # 7, where the DE alone was at 0.063); at 0.001 BT+DE peaks at 0.105 (DE: 0.108).
        MODELS_KEY: {"bt+de": {"bt_weight": 0.001}},
    },
}
# Under PROTOCOLS_KEY: a dataset's defaults for one protocol (shared, and MODELS_KEY).
PROTOCOLS_KEY = "protocols"


def dataset_defaults(
    dataset: str, model: str | None = None, protocol: str = "history_future"
) -> dict:
    """Flag defaults of `dataset` (flag names without dashes), ``{}`` when none: its
    shared defaults, updated with `model`'s own (none for ``model=None``), then with
    `protocol`'s (`PROTOCOL_DEFAULTS`) and the dataset's own for that protocol."""
    out = {}
    entry = DATASET_DEFAULTS.get(dataset, {})
    for level in (entry, PROTOCOL_DEFAULTS.get(protocol, {}),
                  entry.get(PROTOCOLS_KEY, {}).get(protocol, {})):  # fmt: skip
        out.update({k: v for k, v in level.items() if k not in (MODELS_KEY, PROTOCOLS_KEY)})
        out.update(level.get(MODELS_KEY, {}).get(model, {}))
    return out


# hparams-file keys that name another flag.
HPARAMS_ALIASES = {"max_epochs": "epochs"}


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


_BOOL = argparse.BooleanOptionalAction
# The training flags in help order: (flag names, argparse keywords). The default is
# TrainConfig's value in its flag spelling (the key is the dest: the first name without
# dashes, or "dest") unless the keywords give one.
_TRAINING_FLAGS = (
    (("--output_dir",), {"dest": "run_dir", "default": "", "help": "the run directory (empty: "
     "runs/<dataset>_<model>)"}),
    (("--model",), {"choices": MODELS, "help": "bt: Barlow Twins; de: TFRS dual encoder (next "
     "item); bt+de: both losses"}),
    (("--protocol",), {"choices": PROTOCOLS, "help": "history_future: users split into "
     "train/eval/test, each user's last --future_len items its future (the downstream "
     "tasks); leave_one_out: every user trains on all but its last 2 items, item n-1 "
     "validates (epochs judged by its full-ranking NDCG@10), item n tests (SASRec, RecBole)"}),
    (("--init_from",), {"metavar": "RUN", "help": "start the encoder from this run's (its best "
     "epoch; same encoder sizes and item vocabulary), e.g. a bt run before a de fine-tune"}),
    (("--train_users",), {"choices": TRAIN_USERS, "help": "whose histories pretrain the "
     "encoder: train (the train split's users) or all (every split's: labels are future "
     "items, which no encoder reads); val_loss stays on eval"}),
    (("--encoder",), {"dest": "encoder_kind", "choices": ENCODERS, "help": "user-sequence "
     "encoder"}),
    (("--dim",), {"type": int, "help": "encoder width (item embeddings and output)"}),
    (("--num_blocks",), {"type": int, "help": "transformer blocks or GRU layers"}),
    (("--num_heads",), {"type": int, "help": "attention heads per transformer block"}),
    (("--dropout",), {"type": float, "help": "encoder dropout rate"}),
    (("--pooling",), {"choices": POOLINGS, "help": "user vector from the positions"}),
    (("--ffn_dim",), {"type": int, "help": "transformer feed-forward width (0: 4 x --dim)"}),
    (("--positions",), {"choices": ("start", "end"), "help": "positional embeddings counted "
     "from the first item, or from the last (end: SASRec's; the DE then trains each "
     "sequence's last item as a target only)"}),
    (("--scale_embeddings",), {"action": _BOOL, "help": "multiply "
     "the input item rows by sqrt(--dim) before adding positions (SASRec's)"}),
    (("--item_init",), {"choices": ITEM_INITS, "help": "encoder's input item table: Keras' "
     "random init, or svd: the item factors of a rank-dim truncated SVD of the binary user x "
     "item matrix of the --train_users' histories, seeded by --seed (the DE's item side "
     "too when tied)"}),
    (("--freeze_item_embeddings",), {"action": _BOOL, "help": "keep the encoder's input item "
     "table as initialised (not trained; with --tie_item_embeddings the DE's item side too)"}),
    (("--projector",), {"type": flag_type(ProjectorConfig.from_string), "help": "BT projector "
     "MLP widths, dash-separated"}),
    (("--lambd",), {"type": float, "help": "BT weight of the off-diagonal term"}),
    (("--augment",), {"type": flag_type(AugmentPolicy.from_string), "help": "BT views: "
     "comma-separated name:strength of mask, reorder, crop, substitute, insert, apply_prob "
     "(none: identical views)"}),
    (("--de_loss",), {"choices": DE_LOSSES, "help": "DE loss: full_softmax (every catalog item "
     "at every position, SASRec+), sampled_softmax (--num_negatives catalog draws), in_batch "
     "(the paper's DE); auto: full_softmax where batch x max_len x items logits fit 1 GiB, "
     "else sampled_softmax"}),
    (("--num_negatives",), {"type": int, "help": "sampled_softmax: catalog items drawn per "
     "step, shared by every query"}),
    (("--negatives",), {"choices": NEGATIVE_SAMPLERS, "help": "sampled_softmax: uniform, or "
     "popularity draws with the logQ correction"}),
    (("--tie_item_embeddings",), {"action": _BOOL, "help": "DE: the item tower is the "
     "encoder's input item table (SASRec's tied embeddings)"}),
    (("--temperature",), {"type": float, "help": "DE softmax temperature (scores / "
     "temperature)"}),
    (("--bt_weight",), {"type": float, "help": "weight of the BT loss in bt+de"}),
    (("--batch_size",), {"type": int, "help": "GLOBAL batch (users per step, split over "
     "replicas; BT statistics over all of it)"}),
    (("--max_epochs", "--epochs"), {"dest": "epochs", "type": int, "help": "cap on epochs "
     "(training stops earlier when val_loss stops improving); --epochs is its old name"}),
    (("--steps_per_epoch",), {"type": int, "help": "optimizer steps per epoch (0: one pass "
     "over the train users)"}),
    (("--min_steps_per_epoch",), {"type": int, "help": "floor of steps per epoch when "
     "--steps_per_epoch=0 (one pass)"}),
    (("--learning_rate",), {"type": float, "help": "Adam learning rate"}),
    (("--seed",), {"type": int, "help": "seeds weights, shuffles, views and probes"}),
    (("--strategy",), {"choices": STRATEGIES, "help": "tf.distribute strategy (auto: mirrored "
     "over GPUs if > 1; multi_worker reads TF_CONFIG; tpu is untested)"}),
    (("--early_stopping_patience",), {"type": int, "help": "stop after this many epochs "
     "without a val_loss gain (0: train --max_epochs)"}),
    (("--min_delta",), {"type": float, "help": "relative val_loss decrease that counts as a "
     "gain for the patience"}),
    (("--bucket_boundaries",), {"type": flag_type(check_buckets), "help": "length buckets of "
     'the batches: "25,50,100,150", "auto" (least padded compute) or "" (off); default (None): '
     "auto for real datasets, off for synthetic"}),
    (("--cache_input",), {"action": _BOOL, "help": "parse the split once into memory (implied "
     "by --bucket_boundaries)"}),
    (("--mixed_precision",), {"choices": PRECISIONS, "help": "Keras mixed-precision policy "
     "(the BT loss stays float32; --model=bt only)"}),
    (("--steps_per_execution",), {"type": int, "help": "train steps per tf.function call "
     "(fewer Python round trips)"}),
    (("--de_candidates",), {"type": int, "help": "in_batch DE: shared candidates per step "
     "(0: one per user of the batch)"}),
    (("--de_logq",), {"action": _BOOL, "help": "in_batch DE: logQ correction"}),
    (("--jit_compile",), {"action": _BOOL, "help": "XLA-compile the train step"}),
    (("--probe",), {"action": _BOOL, "help": "favorite-genre probe after training"}),
    (("--export",), {"action": _BOOL, "help": "export the encoder as a SavedModel"}),
    (("--score_test",), {"action": _BOOL, "help": "leave_one_out: rank the test item after "
     "training (RUN/recommender.json); tuning.compare turns it off, so that a recipe is "
     "chosen without any test figure in sight"}),
)  # fmt: skip


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The training flags (`bt_tf.train`), preprocessing flags included."""
    data_config.add_flags(parser, output_dir_alias=False)
    defaults = TrainConfig().to_json()  # in their flag spelling
    for names, keywords in _TRAINING_FLAGS:
        dest = keywords.get("dest", names[0].lstrip("-"))
        parser.add_argument(*names, **{"default": defaults.get(dest), **keywords})
    parser.add_argument(
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
    """`value` of hparams key `key`, of the type of the flag's `current` value, parsed."""
    where = f"{path}: {key!r}"
    if key in STRUCTURED:
        if not isinstance(value, str):
            raise UserError(f"{where} must be a string, got {value!r}")
        try:
            return STRUCTURED[key](value)
        except ValueError as err:
            raise UserError(f"{where}: {err}") from None
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
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"data"} | set(ENCODER_FLAGS)
    values = {k: v for k, v in vars(args).items() if k in fields}
    if not values.get("run_dir"):
        values["run_dir"] = os.path.join("runs", f"{args.dataset}_{args.model}")
    data = data_config.config_from_flags(args, beam_args)
    if values.get("protocol") == "leave_one_out":
        if (args.future_len, args.min_history_len) != (2, 1):
            raise UserError(
                "--protocol=leave_one_out holds out each user's last 2 items: drop "
                f"--future_len={args.future_len} / --min_history_len={args.min_history_len} "
                "(it sets 2 and 1)"
            )
        data = leave_one_out_data(data)
        values["input_len"] = args.max_len  # --max_len: the encoder's input, histories whole
    try:
        return TrainConfig.from_settings(values, data=data)
    except UserError:
        raise
    except ValueError as err:
        raise UserError(str(err)) from None


def build_parser(
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    description: str = "",
    model: str | None = None,
    shared_only: bool = False,
    hparams: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """The parser of the training flags, with the defaults of the ``--dataset`` in `argv`
    and of the run's model (`apply_dataset_defaults`)."""
    parser = cli.ArgumentParser(
        prog=prog or "python -m bt_tf.train",
        usage="%(prog)s [--flag=VALUE ...]",
        description=description,
        epilog="Real datasets have their own defaults for some flags (ml-100k, ml-1m, ml-20m: "
        "DATASET_DEFAULTS in bt_tf/training/flags.py), some per model; `--dataset=NAME "
        "--model=MODEL --help` shows them. "
        "Any other --flag is passed to Beam (preprocessing), e.g. --runner=...",
        allow_abbrev=True,
    )
    add_flags(parser)
    apply_dataset_defaults(parser, argv, model=model, shared_only=shared_only, hparams=hparams)
    return parser


def parse(
    argv: Sequence[str] | None = None,
    description: str = "",
    hparams: Sequence[str] = (),
    *,
    prog: str | None = None,
    model: str | None = None,
    shared_only: bool = False,
) -> TrainConfig:
    """Command line -> config (``hparams``: extra files applied after ``--hparams``).

    ``model``: the run's model, for a command line without ``--model`` (the runs
    of `bt_tf.reproduce`): its dataset defaults apply; ``shared_only``: the
    dataset's shared defaults alone (see `apply_dataset_defaults`). Unknown flags
    are Beam options (`UserError` for one Beam does not know either). Raises
    `UserError` naming the flag for a bad value.
    """
    parser = build_parser(
        argv,
        prog=prog,
        description=description,
        model=model,
        shared_only=shared_only,
        hparams=hparams,
    )
    args, beam_args = data_config.parse_with_beam_flags(parser, argv)
    return config_from_flags(args, beam_args, hparams)


def apply_dataset_defaults(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    model: str | None = None,
    shared_only: bool = False,
    hparams: Sequence[str] = (),
) -> str:
    """Sets `parser`'s defaults to those of the ``--dataset`` in `argv`; returns its name.

    They are the dataset's shared defaults updated with the run's model's own
    (`dataset_defaults`). The model: ``model`` if given (also the default of
    ``--model`` then); else the ``"model"`` of the last hparams file (``--hparams``
    in `argv`, then `hparams`) that names one, as those override the flags; else
    ``--model`` in `argv`; else `TrainConfig`'s. ``shared_only``: no model's own.
    """
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--dataset", default=data_config.PreprocessConfig().dataset)
    probe.add_argument("--model", default=TrainConfig().model)
    probe.add_argument("--hparams", default=None)
    probe.add_argument("--protocol", default=TrainConfig().protocol)
    given = probe.parse_known_args(argv)[0]
    if model is not None:
        parser.set_defaults(model=model)
    else:
        model = _hparams_model([given.hparams, *hparams]) or given.model
    parser.set_defaults(
        **dataset_defaults(given.dataset, None if shared_only else model, given.protocol)
    )
    return given.dataset


def _hparams_model(paths: Sequence[str | None]) -> str | None:
    """The ``"model"`` of the last hparams file that names one (unreadable files are
    skipped here: parsing the flags reports them)."""
    named = None
    for path in paths:
        try:
            value = read_hparams(path).get("model") if path else None
        except (OSError, ValueError):
            continue
        named = value if value in MODELS else named
    return named

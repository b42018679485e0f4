"""The search space: which `TrainConfig` fields are tuned, over what, and how a
trial's values become the `TrainConfig` that `bt_tf.training.train` runs.

KerasTuner hyperparameter names (the keys of a trial's values):

==================  ==========================================  ======================
name                values                                      TrainConfig field
==================  ==========================================  ======================
``lambd``           log-uniform over ``lambd_range``            ``lambd``
``projector_width`` choice of ``projector_widths``              ``projector`` =
``projector_depth`` choice of ``projector_depths``              ``"W-W[-W]"`` (depth x)
``mask``            uniform ``mask_range`` (augment only)       ``augment`` =
``reorder``         uniform ``reorder_range`` (augment only)    ``"mask:g,reorder:b,``
``crop``            uniform ``crop_range`` (augment only)       ``crop:e``
``substitute``      ``substitute_range``, step 0.1 (augment)    ``[,substitute:s]``
``insert``          ``insert_range``, step 0.1 (augment)        ``[,insert:i]"``
``learning_rate``   log-uniform (bt: augment only)              ``learning_rate``
``temperature``     log-uniform over ``temperature_range``      ``temperature``
``bt_weight``       log-uniform over ``bt_weight_range``        ``bt_weight``
``projector``       a pinned projector string                   ``projector``
``augment``         a pinned augment string                     ``augment``
``pooling``         choice mean/last (``search_pooling``)       ``pooling``
``item_init``       choice random/svd (``search_item_init``)    ``item_init``
==================  ==========================================  ======================

Which names a search has depends on the model it tunes (``--model``, see
`MODEL_PARAMETERS`): ``bt`` searches the Barlow Twins settings (lambda,
projector, with ``search_augment`` also the augmentation and the learning
rate); ``de`` (the dual encoder) its softmax temperature and learning rate
only (it has no lambda, projector or augmentation); ``bt+de`` both, plus
``bt_weight``. So a DE gets its own temperature and learning rate, found with
the same tuner and budget as BT, and its ``best_hparams.json`` holds exactly
the flags ``python -m bt_tf.train --model=de --hparams=FILE`` reads. Every
model may also search its encoder's pooling (``search_pooling``) and the init
of its input item table (``search_item_init``: Keras' random init or the SVD
item factors, see `bt_tf.training.config`), both off by default.

A *pin* fixes a value: it becomes a `keras_tuner` ``Fixed`` hyperparameter
(so it is recorded with every trial and written to ``best_hparams.json``)
and the dimensions it determines are not searched. Pinning ``projector``
replaces width and depth; pinning ``augment`` replaces mask/reorder/crop/
substitute/insert.
Hyperband's ``tuner/*`` bookkeeping values are ignored here. A substitute or
insert value of 0 turns that op off (it is left out of the policy string).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import keras_tuner

from bt_tf.data.augment import AugmentPolicy
from bt_tf.modeling.projector import ProjectorConfig
from bt_tf.training.config import ENCODER_FLAGS, ITEM_INITS, POOLINGS, TrainConfig

# TrainConfig fields (= flag names of `bt_tf.train`) that a search may set.
SEARCHABLE_FLAGS = (
    "lambd",
    "projector",
    "augment",
    "learning_rate",
    "temperature",
    "bt_weight",
    "pooling",
    "item_init",
)
# Names that `--pin=NAME=VALUE` accepts.
PIN_NAMES = (
    "lambd",
    "projector",
    "projector_width",
    "projector_depth",
    "augment",
    "mask",
    "reorder",
    "crop",
    "substitute",
    "insert",
    "learning_rate",
    "temperature",
    "bt_weight",
    "pooling",
    "item_init",
)
_AUGMENT_PARTS = ("mask", "reorder", "crop", "substitute", "insert")
# Parts searched on a grid that includes 0 (= op off): the co-occurrence ops
# are new, so the search must be able to leave them out.
_AUGMENT_STEPS = {"substitute": 0.1, "insert": 0.1}
_BT_NAMES = ("lambd", "projector", "projector_width", "projector_depth", "augment")
_BT_NAMES += _AUGMENT_PARTS
# Choices of the categorical names: every value the TrainConfig field takes.
_CHOICES = {"pooling": POOLINGS, "item_init": ITEM_INITS}
# The hyperparameter names (pins included) that apply to each model.
MODEL_PARAMETERS = {
    "bt": (*_BT_NAMES, "learning_rate", *_CHOICES),
    "de": ("temperature", "learning_rate", *_CHOICES),
    "bt+de": (*_BT_NAMES, "learning_rate", "temperature", "bt_weight", *_CHOICES),
}
_TYPES = {
    "lambd": float,
    "projector": str,
    "projector_width": int,
    "projector_depth": int,
    "augment": str,
    "mask": float,
    "reorder": float,
    "crop": float,
    "substitute": float,
    "insert": float,
    "learning_rate": float,
    "temperature": float,
    "bt_weight": float,
    "pooling": str,
    "item_init": str,
}


def searchable_flags(model: str) -> tuple[str, ...]:
    """The `SEARCHABLE_FLAGS` that apply to ``model`` ("bt", "de", "bt+de")."""
    return tuple(f for f in SEARCHABLE_FLAGS if f in MODEL_PARAMETERS[model])


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Ranges of the searched dimensions and the pinned values.

    Attributes:
      model: the model the search tunes ("bt", "de", "bt+de"); it decides the
        dimensions (module docstring).
      lambd_range: (low, high) of the log-uniform Barlow Twins off-diagonal weight.
      projector_widths, projector_depths: choices; the projector is ``depth``
        layers of ``width`` units.
      search_augment: also search mask gamma, reorder beta, crop eta (uniform
        over their ranges), the substitute and insert fractions (over their
        ranges in steps of 0.1, 0 = off) and, for bt, the learning rate
        (log-uniform); not for de (no augmentation).
      learning_rate_range: (low, high), log-uniform; always searched for de
        and bt+de.
      temperature_range: (low, high) of the log-uniform DE softmax
        temperature (de, bt+de).
      bt_weight_range: (low, high) of the log-uniform BT loss weight (bt+de).
      search_pooling: also search the encoder's pooling (choice of mean, last).
      search_item_init: also search the init of the encoder's input item table
        (choice of random, svd; see ``--item_init``).
      pins: ``((name, value), ...)``, names from `PIN_NAMES`; pinned names are
        not searched (see module docstring).
    """

    model: str = "bt"
    lambd_range: tuple[float, float] = (1e-4, 1e-1)
    projector_widths: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096)
    projector_depths: tuple[int, ...] = (2, 3)
    search_augment: bool = False
    mask_range: tuple[float, float] = (0.05, 0.6)
    reorder_range: tuple[float, float] = (0.05, 0.6)
    crop_range: tuple[float, float] = (0.5, 1.0)
    substitute_range: tuple[float, float] = (0.0, 0.5)
    insert_range: tuple[float, float] = (0.0, 0.5)
    learning_rate_range: tuple[float, float] = (1e-4, 1e-2)
    temperature_range: tuple[float, float] = (0.02, 1.0)
    bt_weight_range: tuple[float, float] = (0.01, 1.0)
    search_pooling: bool = False
    search_item_init: bool = False
    pins: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        pins = dict(self.pins)
        if self.model not in MODEL_PARAMETERS:
            raise ValueError(f"model {self.model!r}: expected one of {list(MODEL_PARAMETERS)}")
        unknown = sorted(set(pins) - set(PIN_NAMES))
        if unknown:
            raise ValueError(f"cannot pin {unknown}: pinnable names are {list(PIN_NAMES)}")
        foreign = sorted(set(pins) - set(MODEL_PARAMETERS[self.model]))
        if foreign:
            raise ValueError(
                f"cannot pin {foreign} for --model={self.model}: it has no such setting "
                f"(its names: {list(MODEL_PARAMETERS[self.model])})"
            )
        if self.search_augment and self.model == "de":
            raise ValueError(
                "--search_augment searches the Barlow Twins augmentation; --model=de has "
                "none (its search always covers temperature and learning rate)"
            )
        for name, choices in _CHOICES.items():
            if name in pins and pins[name] not in choices:
                raise ValueError(f"--pin={name}={pins[name]}: expected one of {choices}")
        if "projector" in pins and {"projector_width", "projector_depth"} & set(pins):
            raise ValueError("pin either projector or projector_width/projector_depth, not both")
        parts = "/".join(_AUGMENT_PARTS)
        if "augment" in pins and set(_AUGMENT_PARTS) & set(pins):
            raise ValueError(f"pin either augment or {parts}, not both")
        if not self.search_augment and set(_AUGMENT_PARTS) & set(pins):
            raise ValueError(
                f"{parts} are searched only with --search_augment; without it "
                "pin the whole policy, e.g. --augment=mask:0.3,reorder:0.3"
            )
        for name, (low, high) in (
            ("lambd", self.lambd_range),
            ("learning_rate", self.learning_rate_range),
            ("temperature", self.temperature_range),
            ("bt_weight", self.bt_weight_range),
        ):
            if not 0 < low <= high:
                raise ValueError(f"{name} range ({low}, {high}) must satisfy 0 < low <= high")
        if not self.projector_widths or not self.projector_depths:
            raise ValueError("projector_widths and projector_depths need at least one value")
        if any(w < 1 for w in self.projector_widths) or any(d < 1 for d in self.projector_depths):
            raise ValueError("projector widths and depths must be >= 1")

    @property
    def pinned(self) -> dict[str, Any]:
        return {name: _TYPES[name](value) for name, value in self.pins}

    def hyperparameters(self) -> keras_tuner.HyperParameters:
        """The KerasTuner space (pinned values as ``Fixed``), given to the oracle."""
        hp = keras_tuner.HyperParameters()
        pinned = self.pinned

        def fixed_or(name: str, make) -> None:
            if name in pinned:
                hp.Fixed(name, pinned[name])
            else:
                make()

        def log_uniform(name: str) -> None:
            low, high = getattr(self, f"{name}_range")
            fixed_or(name, lambda: hp.Float(name, low, high, sampling="log"))

        if self.model != "de":
            self._bt_hyperparameters(hp, fixed_or)
        if self.model != "bt" or self.search_augment or "learning_rate" in pinned:
            log_uniform("learning_rate")
        if self.model != "bt":
            log_uniform("temperature")
        if self.model == "bt+de":
            log_uniform("bt_weight")
        for name, choices in _CHOICES.items():
            if getattr(self, f"search_{name}") or name in pinned:
                fixed_or(name, lambda n=name, c=choices: hp.Choice(n, list(c)))
        return hp

    def _bt_hyperparameters(self, hp: keras_tuner.HyperParameters, fixed_or) -> None:
        """Lambda, projector and (``search_augment``) the augmentation strengths."""
        pinned = self.pinned
        fixed_or("lambd", lambda: hp.Float("lambd", *self.lambd_range, sampling="log"))
        if "projector" in pinned:
            hp.Fixed("projector", pinned["projector"])
        else:
            for name in ("projector_width", "projector_depth"):
                choices = sorted(set(getattr(self, name + "s")))
                if len(choices) == 1 and name not in pinned:  # one choice: not a dimension
                    hp.Fixed(name, choices[0])
                else:
                    fixed_or(name, lambda n=name, c=choices: hp.Choice(n, c))
        if "augment" in pinned:
            hp.Fixed("augment", pinned["augment"])
        elif self.search_augment:
            for name in _AUGMENT_PARTS:
                low, high = getattr(self, f"{name}_range")
                step = _AUGMENT_STEPS.get(name)
                fixed_or(name, lambda n=name, lo=low, hi=high, s=step: hp.Float(n, lo, hi, step=s))

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["pins"] = self.pinned
        return out


def parse_pin(text: str) -> tuple[str, Any]:
    """``"lambd=0.005"`` -> ``("lambd", 0.005)`` (typed; see `PIN_NAMES`)."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or name not in _TYPES:
        raise ValueError(
            f"--pin={text!r}: expected NAME=VALUE with NAME one of {list(PIN_NAMES)}, "
            "e.g. --pin=lambd=0.005 or --pin=projector=512-512-512"
        )
    try:
        return name, _TYPES[name](value.strip())
    except ValueError as err:
        raise ValueError(
            f"--pin={text!r}: {value!r} is not a valid {_TYPES[name].__name__}"
        ) from err


def _three_digits(value: float) -> float:
    return float(f"{float(value):.3g}")


def trial_settings(values: Mapping[str, Any], base: TrainConfig | None = None) -> dict:
    """A trial's hyperparameter values -> ``{TrainConfig field: typed value}``.

    Only the fields the values determine appear (keys in `SEARCHABLE_FLAGS`):
    ``projector`` a `ProjectorConfig` (``depth`` layers of ``width``),
    ``augment`` an `AugmentPolicy` (strengths to 3 significant digits;
    substitute/insert only when > 0: at 0 the op, and its table, are skipped).
    Pinned ``projector``/``augment`` values are flag strings (KerasTuner keeps
    plain values), parsed here. ``base`` fills an augment part that is missing
    from ``values`` (mask/reorder/crop/substitute/insert are set together).
    """
    out: dict[str, Any] = {}
    if "lambd" in values:
        out["lambd"] = float(values["lambd"])
    if "projector" in values:
        out["projector"] = ProjectorConfig.from_string(str(values["projector"]))
    elif "projector_width" in values or "projector_depth" in values:
        if not ("projector_width" in values and "projector_depth" in values):
            raise ValueError(f"need both projector_width and projector_depth in {dict(values)}")
        width, depth = int(values["projector_width"]), int(values["projector_depth"])
        out["projector"] = ProjectorConfig((width,) * depth)
    if "augment" in values:
        out["augment"] = AugmentPolicy.from_string(str(values["augment"]))
    elif any(name in values for name in _AUGMENT_PARTS):
        default = (base or TrainConfig()).augment
        parts = {
            name: float(values[name]) if name in values else (getattr(default, name) or 0.0)
            for name in _AUGMENT_PARTS
        }
        parts["crop"] = parts["crop"] or 1.0  # no crop in the base policy: keep everything
        strengths = {name: _three_digits(value) for name, value in parts.items()}
        for name in ("substitute", "insert"):
            strengths[name] = strengths[name] or None
        out["augment"] = AugmentPolicy(**strengths)
    for name in ("learning_rate", "temperature", "bt_weight"):
        if name in values:
            out[name] = float(values[name])
    for name in _CHOICES:
        if name in values:
            out[name] = str(values[name])
    return out


def train_flags(values: Mapping[str, Any], base: TrainConfig | None = None) -> dict:
    """`trial_settings` as flag values (``projector``/``augment`` as their flag strings):
    the content of ``best_hparams.json``, which ``--hparams`` reads back."""
    return {
        name: value.to_string() if name in ("projector", "augment") else value
        for name, value in trial_settings(values, base).items()
    }


def trial_config(
    base: TrainConfig, values: Mapping[str, Any], run_dir: str, **overrides
) -> TrainConfig:
    """The training config of one trial: ``base`` with the trial's values, its
    run directory, and ``overrides`` (e.g. ``epochs=``, ``probe=False``). An
    encoder setting (``pooling``) goes to ``base.encoder``."""
    settings = trial_settings(values, base)
    encoder = {ENCODER_FLAGS[k]: settings.pop(k) for k in list(settings) if k in ENCODER_FLAGS}
    if encoder:
        settings["encoder"] = dataclasses.replace(base.encoder, **encoder)
    return dataclasses.replace(base, run_dir=run_dir, **settings, **overrides)

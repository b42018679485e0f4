"""The Barlow Twins projector: its typed config (`ProjectorConfig`) and the Keras MLP."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras: sets TF_USE_LEGACY_KERAS before tensorflow)


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    """The projector's layer widths, e.g. ``(1024, 1024, 1024)``; the last is the output."""

    widths: tuple[int, ...] = (1024, 1024, 1024)

    def __post_init__(self):
        widths = tuple(self.widths)
        if not widths or any(
            isinstance(w, bool) or not isinstance(w, int) or w <= 0 for w in widths
        ):
            raise ValueError(
                f"projector widths {widths!r} must be one or more positive integers, "
                'e.g. "1024-1024-1024".'
            )
        object.__setattr__(self, "widths", widths)

    @classmethod
    def from_string(cls, spec: str) -> ProjectorConfig:
        """ "1024-1024-1024" → ``ProjectorConfig((1024, 1024, 1024))``."""
        return cls(tuple(parse_projector_spec(spec)))

    def to_string(self) -> str:
        """Inverse of `from_string` (the ``--projector`` flag and config.json value)."""
        return "-".join(str(w) for w in self.widths)

    @property
    def output_dim(self) -> int:
        return self.widths[-1]


def parse_projector_spec(spec: str) -> list[int]:
    """ "1024-1024-1024" → [1024, 1024, 1024]."""
    try:
        sizes = [int(part) for part in spec.split("-")]
    except ValueError:
        sizes = []
    if not sizes or any(size <= 0 for size in sizes):
        raise ValueError(
            f"Projector spec {spec!r} is not a dash-separated list of positive layer "
            'widths; write it like "1024-1024-1024".'
        )
    return sizes


def build_projector(
    spec: ProjectorConfig | str, *, synchronized_bn: bool = True, name: str = "projector"
) -> tf.keras.Sequential:
    """The BT projector: Dense → BatchNorm → ReLU between layers, a bare last Dense.

    As in facebookresearch/barlowtwins, the Dense layers have no bias (the batch
    norm that follows, or the loss's own standardization after the last one,
    would cancel it). With `synchronized_bn=True` the batch norm statistics are
    all-reduced over the GLOBAL batch when several replicas run under a
    `tf.distribute` strategy (with one replica it is an ordinary batch norm), so
    the projector, like the loss, does not depend on how the batch is split.

    Args:
        spec: a `ProjectorConfig`, or layer widths as a string, e.g. "1024-1024-1024".
        synchronized_bn: synchronize batch norm across replicas.
        name: model name.

    Returns:
        `tf.keras.Sequential` mapping `[B, D_in]` to `[B, last width]`.
    """
    if isinstance(spec, str):
        spec = ProjectorConfig.from_string(spec)
    sizes = spec.widths
    layers = []
    for i, size in enumerate(sizes[:-1]):
        layers += [
            tf.keras.layers.Dense(size, use_bias=False, name=f"dense_{i}"),
            tf.keras.layers.BatchNormalization(synchronized=synchronized_bn, name=f"bn_{i}"),
            tf.keras.layers.ReLU(name=f"relu_{i}"),
        ]
    layers.append(tf.keras.layers.Dense(sizes[-1], use_bias=False, name=f"dense_{len(sizes) - 1}"))
    return tf.keras.Sequential(layers, name=name)

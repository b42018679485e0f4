"""The evaluation protocol's constants and `EvalSettings` (no TensorFlow import).

Everything that changes a probe result besides the model and the (task,
fraction, seed) lives here, so the report can state the protocol without
loading TensorFlow and the caches can fingerprint it.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "DEFAULT_FRACTIONS",
    "DEFAULT_L2_GRID",
    "DEFAULT_SE_RULE",
    "MIN_SELECTION_USERS",
    "EvalSettings",
    "selection_rule",
]

DEFAULT_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 1.0)
# Strongest first: on an exact tie of the eval metric the earlier (stronger) wins.
DEFAULT_L2_GRID = (10.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4)

# Selection (L2 choice, early stopping) at fraction f sees f of the eval users'
# labels, but never fewer than this many users (`labels.sample_selection_users`).
MIN_SELECTION_USERS = 10

# Selection slack in standard errors of the best candidate (`probe.train_softmax_probe`).
DEFAULT_SE_RULE = 0.5


def selection_rule(min_users: int = MIN_SELECTION_USERS, se_rule: float = DEFAULT_SE_RULE) -> str:
    """The selection protocol in one sentence (the report states it)."""
    return (
        "Scarce labels everywhere: at label fraction f each probe's L2 strength and "
        "stopping epoch are selected on the same fraction f of eval users (seeded, "
        "stratified by class where the label is a class, at least "
        f"{int(min_users)} users), never on all eval labels, and the simplest candidate "
        f"within {se_rule:g} standard errors of the best wins, starting from the prior "
        "(majority-class) predictor."
    )


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Everything that changes a probe result besides the model and (task, fraction, seed).

    Attributes:
        l2_grid: probe L2 strengths (chosen on eval; see `probe.train_softmax_probe`).
        probe_max_epochs, probe_patience, probe_min_epochs: probe early stopping.
        probe_se_rule: selection slack in standard errors (`DEFAULT_SE_RULE`).
        min_selection_users: at fraction f, selection uses f of the eval users
            but at least this many (`labels.sample_selection_users`).
        exclude_history: remove history items from the next-item ranking.
        k: cutoff of HR@k / NDCG@k.
        liked_threshold: a future rating >= this is "liked".
        bag_projection_dim: random-projection width of the bag-of-items floor
            when the catalog (vocab incl. reserved ids) exceeds
            ``bag_projection_above``; below that the sparse bag is used as is.
        embed_batch_size: users per encoder forward pass.
    """

    l2_grid: tuple[float, ...] = DEFAULT_L2_GRID
    probe_max_epochs: int = 200
    probe_patience: int = 5
    probe_min_epochs: int = 10
    probe_se_rule: float = DEFAULT_SE_RULE
    min_selection_users: int = MIN_SELECTION_USERS
    exclude_history: bool = True
    k: int = 10
    liked_threshold: float = 4.0
    bag_projection_dim: int = 256
    bag_projection_above: int = 5000
    embed_batch_size: int = 512

    def probe_kwargs(self) -> dict:
        """Keyword arguments of `probe.train_softmax_probe`."""
        return dict(
            l2_grid=tuple(self.l2_grid),
            max_epochs=self.probe_max_epochs,
            patience=self.probe_patience,
            min_epochs=min(self.probe_min_epochs, self.probe_max_epochs),
            se_rule=self.probe_se_rule,
        )

    def protocol(self) -> str:
        """The selection rule in one sentence, for the report."""
        return selection_rule(self.min_selection_users, self.probe_se_rule)

"""The probes' settings, `EvalSettings` (no TensorFlow import).

Everything that changes a probe result besides the model, the protocol
(`protocol.Protocol`) and the (task, fraction, seed) lives here, so the caches
can fingerprint it.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "DEFAULT_FRACTIONS",
    "DEFAULT_L2_GRID",
    "DEFAULT_SE_RULE",
    "DEFAULT_NEXT_ITEM_NEGATIVES",
    "DEFAULT_NEXT_ITEM_SELECTION_ROWS",
    "EvalSettings",
]

DEFAULT_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 1.0)
# The softmax next-item variant's L2 grid, strongest first (`probe.train_softmax_probe`).
DEFAULT_L2_GRID = (10.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4)

# Selection slack in standard errors of the best candidate (`linear.select_and_fit`).
# 0: the candidate with the best cross-validated log-likelihood, ties to the simpler.
# Measured on ML-100K favorite genre, 5 folds x 3 seeds at 5% and 10% labels: with
# 0.5 the BT and DE probes kept the prior predictor in 73-100% of the fits (the
# slack is wider than any gain 40-75 labelled users can show); with 0 BT kept it in
# 0-27%, DE in 20-40%, untrained encoders in 47-87%, and no accuracy fell below
# the majority class's by more than 0.02.
DEFAULT_SE_RULE = 0.0
# Items of the next-item probe's sampled softmax (`EvalSettings.next_item_negatives`).
DEFAULT_NEXT_ITEM_NEGATIVES = 1024
# Labelled users the next-item probe's C selection runs on at most
# (`EvalSettings.next_item_selection_rows`; see its docstring for the measurements).
DEFAULT_NEXT_ITEM_SELECTION_ROWS = 4000


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Everything that changes a probe result besides the model, the protocol and
    (task, fraction, seed).

    Attributes:
        c_grid: inverse L2 strengths ``C`` of the classification and liked-item
            probes (standardized features; ``||W||^2 / (2C)`` against the summed
            log-loss, scikit-learn's convention), strongest penalty first.
        next_item_c_grid: the same for the bilinear next-item probe's ``dW``
            (its scale terms are free; ``dW`` has ``d x e`` entries, hence a
            stronger grid).
        next_item_negatives: items the next-item probe's fits and selection
            run their softmax over (`linear.item_sample`: the most popular
            always, the rest a popularity-weighted sample with the logQ
            correction); 0 or at least half the catalog: the full softmax. The
            metric always ranks the full catalog.
        next_item_selection_rows: above this many labelled users, the
            next-item probe's C is chosen by cross-validation on a seeded
            subsample of this many (`linear.select_and_fit`'s
            ``selection_rows``), then refitted on all of them; 0: on all. The
            selection fits are most of a large fraction's cost (18 of 19 fits
            per fold, each on 2/3 of the labelled users).
        probe_se_rule: selection slack in standard errors (`DEFAULT_SE_RULE`).
        exclude_history: remove history items from the next-item ranking.
        k: cutoff of HR@k / NDCG@k.
        liked_threshold: a future rating >= this is "liked".
        bag_projection_dim, bag_projection_above, knn_top_k: catalogs larger
            than ``bag_projection_above`` items project the bag-of-items floor
            to ``bag_projection_dim`` dimensions and keep each item's
            ``knn_top_k`` nearest neighbours in its item-kNN.
        embed_batch_size: users per encoder forward pass.
        l2_grid, probe_max_epochs, probe_patience, probe_min_epochs: the
            full-softmax next-item variant (`tasks.NextItemSoftmaxTask`).
    """

    c_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    next_item_c_grid: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
    next_item_negatives: int = DEFAULT_NEXT_ITEM_NEGATIVES
    next_item_selection_rows: int = DEFAULT_NEXT_ITEM_SELECTION_ROWS
    probe_se_rule: float = DEFAULT_SE_RULE
    exclude_history: bool = True
    k: int = 10
    liked_threshold: float = 4.0
    bag_projection_dim: int = 256
    bag_projection_above: int = 5000
    knn_top_k: int = 200
    embed_batch_size: int = 512
    l2_grid: tuple[float, ...] = DEFAULT_L2_GRID
    probe_max_epochs: int = 200
    probe_patience: int = 5
    probe_min_epochs: int = 10

    def probe_kwargs(self) -> dict:
        """Keyword arguments of `probe.train_softmax_probe` (the softmax next-item variant)."""
        return dict(
            l2_grid=tuple(self.l2_grid),
            max_epochs=self.probe_max_epochs,
            patience=self.probe_patience,
            min_epochs=min(self.probe_min_epochs, self.probe_max_epochs),
            se_rule=self.probe_se_rule,
        )

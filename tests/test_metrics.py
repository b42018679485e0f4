"""Full-catalog ranking and classification metrics on hand-computed cases."""

import math

import numpy as np
import pytest

from bt_tf.evaluation import metrics

# 8 items: ids 0,1,2 reserved (pad/mask/OOV), 3..7 real. Reserved ids get the
# highest scores to prove they are never ranked.
#            id:  0    1    2    3    4    5    6    7
SCORES = np.array([9.0, 9.0, 9.0, 0.5, 0.9, 0.8, 0.1, 0.7])
# Ranking of the real items: 4 (0.9), 5 (0.8), 7 (0.7), 3 (0.5), 6 (0.1).


def test_target_at_rank_3_hand_case():
    scores = SCORES[None, :]
    # Target 7 is third among real items (4, 5, 7): rank 3 (it would be 6 if the
    # reserved ids were ranked). NDCG@10 = 1/log2(3+1) = 1/2.
    assert metrics.target_ranks(scores, [7]).tolist() == [3.0]
    assert metrics.hit_rate_at_k(scores, [7], k=10) == 1.0
    assert metrics.ndcg_at_k(scores, [7], k=10) == pytest.approx(0.5)
    # k=2 cuts it off: HR@2 = NDCG@2 = 0.
    assert metrics.hit_rate_at_k(scores, [7], k=2) == 0.0
    assert metrics.ndcg_at_k(scores, [7], k=2) == 0.0


def test_several_users_mean():
    scores = np.stack([SCORES, SCORES, SCORES])
    targets = [4, 7, 6]  # ranks 1, 3, 5
    # HR@3 = (1 + 1 + 0)/3; NDCG@3 = (1/log2(2) + 1/log2(4) + 0)/3 = (1 + 0.5)/3 = 0.5.
    assert metrics.hit_rate_at_k(scores, targets, k=3) == pytest.approx(2 / 3)
    assert metrics.ndcg_at_k(scores, targets, k=3) == pytest.approx(0.5)
    out = metrics.ranking_metrics(scores, targets, ks=(3, 5))
    # NDCG@5 adds user 3 at rank 5: 1/log2(6) = 0.38685.
    assert out["hr@5"] == pytest.approx(1.0)
    assert out["ndcg@5"] == pytest.approx((1 + 0.5 + 1 / math.log2(6)) / 3)


def test_history_exclusion():
    scores = SCORES[None, :]
    # Exclude item 4 (0 = padding): target 7 moves from rank 3 to rank 2,
    # NDCG = 1/log2(3) = 0.63093.
    exclude = np.array([[4, 0, 0]])
    assert metrics.target_ranks(scores, [7], exclude=exclude).tolist() == [2.0]
    assert metrics.ndcg_at_k(scores, [7], exclude=exclude) == pytest.approx(1 / math.log2(3))
    # Excluding 4 and 5: rank 1, NDCG 1.
    assert metrics.ndcg_at_k(scores, [7], exclude=np.array([[5, 4, 0]])) == 1.0
    # An excluded target cannot be recommended: a miss.
    assert metrics.target_ranks(scores, [7], exclude=np.array([[7, 0, 0]])).tolist() == [np.inf]
    # Reserved ids and padding inside exclude are harmless.
    assert metrics.target_ranks(scores, [7], exclude=np.array([[0, 1, 2]])).tolist() == [3.0]


def test_reserved_and_invalid_targets_are_misses():
    scores = np.stack([SCORES] * 3)
    # Targets pad (0), OOV (2) and out-of-range (8) are never hits.
    assert np.isinf(metrics.target_ranks(scores, [0, 2, 8])).all()
    assert metrics.hit_rate_at_k(scores, [0, 2, 8], k=10) == 0.0


def test_ties_are_pessimistic():
    # All real items score 1.0: the target is placed after the 4 other real
    # items, rank 5, whatever its id (reserved ids still not counted).
    flat = np.array([[5.0, 5.0, 5.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    assert metrics.target_ranks(flat, [3]).tolist() == [5.0]
    assert metrics.target_ranks(flat, [7]).tolist() == [5.0]
    # Target tied with one other item, one item above: rank 1 + 1 + 1 = 3.
    s = np.array([[0.0, 0.0, 0.0, 0.2, 0.9, 0.5, 0.5, 0.1]])
    assert metrics.target_ranks(s, [5]).tolist() == [3.0]
    assert metrics.target_ranks(s, [6]).tolist() == [3.0]


def test_matches_brute_force_sort_and_chunking():
    rng = np.random.default_rng(0)
    n, num_items = 57, 40
    scores = rng.normal(size=(n, num_items))
    targets = rng.integers(3, num_items, n)
    exclude = np.where(rng.random((n, 6)) < 0.7, rng.integers(3, num_items, (n, 6)), 0)
    expected = []
    for i in range(n):
        banned = set(exclude[i][exclude[i] > 0].tolist()) | {0, 1, 2}
        order = [j for j in np.argsort(-scores[i]) if j not in banned]
        expected.append(order.index(targets[i]) + 1 if targets[i] in order else np.inf)
    ranks = metrics.target_ranks(scores, targets, exclude=exclude, chunk_size=8)
    np.testing.assert_array_equal(ranks, expected)
    # A callable score source gives the same ranks chunk by chunk.
    calls = []

    def rows(start, stop):
        calls.append((start, stop))
        return scores[start:stop]

    np.testing.assert_array_equal(
        metrics.target_ranks(rows, targets, exclude=exclude, chunk_size=20), expected
    )
    assert calls == [(0, 20), (20, 40), (40, 57)]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="NaN"):
        metrics.target_ranks(np.array([[0.0, 0.0, 0.0, np.nan]]), [3])
    with pytest.raises(ValueError, match="padded"):
        metrics.target_ranks(SCORES[None, :], [3], exclude=np.array([1, 2]))


def test_classification_metrics_hand_cases():
    y = np.array([0, 0, 0, 1])
    pred = np.zeros(4, dtype=int)
    # 3 of 4 right; recalls: class 0 = 3/3, class 1 = 0/1 -> balanced (1 + 0)/2.
    assert metrics.accuracy(y, pred) == 0.75
    assert metrics.balanced_accuracy(y, pred) == 0.5
    # AUC: positives {0.35, 0.8}, negatives {0.1, 0.4}; pairs won: (0.35>0.1),
    # (0.8>0.1), (0.8>0.4) = 3 of 4 -> 0.75.
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert math.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))
    # Majority: tie between 2 and 5 (two each) -> smaller id; -1 is ignored.
    assert metrics.majority_class([5, 2, -1, -1, -1, 5, 2]) == 2
    with pytest.raises(ValueError, match="at least one"):
        metrics.majority_class([-1, -1])

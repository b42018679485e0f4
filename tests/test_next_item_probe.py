"""The next-item probe's sampled softmax: the item sample, the fit against the exact one."""

import numpy as np
import pytest
import scipy.sparse
import scipy.stats

import bt_tf.evaluation.linear as linear
from bt_tf.evaluation import contenders, metrics
from bt_tf.evaluation.contenders import Contender
from bt_tf.evaluation.labels import item_counts
from bt_tf.evaluation.linear import BilinearFamily, item_sample
from bt_tf.evaluation.protocol import Population, Protocol
from bt_tf.evaluation.settings import EvalSettings
from bt_tf.evaluation.tasks import NEXT_ITEM, ProbeContext, _next_item_rows, probe_contender
from bt_tf.features import NUM_RESERVED


def _zipf_log_pop(v: int) -> np.ndarray:
    lp = np.zeros(v)
    lp[NUM_RESERVED:] = -np.log(np.arange(1, v - NUM_RESERVED + 1))
    return lp


def test_item_sample_draws_each_item_with_its_inclusion_probability():
    lp = _zipf_log_pop(203)
    pi = linear._inclusion_probabilities(np.exp(lp[NUM_RESERVED:]), 40)
    assert pi.sum() == pytest.approx(40) and pi.max() == 1.0
    head = np.flatnonzero(pi == 1.0)
    assert head.size >= 1 and head.max() < 10  # the most popular are always in
    free = pi < 1.0  # the others in proportion to popularity
    np.testing.assert_allclose(pi[free] / np.exp(lp[NUM_RESERVED:])[free], pi[free][0] / np.exp(
        lp[NUM_RESERVED:])[free][0], rtol=1e-9)  # fmt: skip
    counts = np.zeros(203)
    draws = 3000
    for seed in range(draws):
        s = item_sample(lp, 40, seed)
        assert s.size == 40 and np.unique(s.ids).size == 40 and s.ids.min() >= NUM_RESERVED
        np.testing.assert_allclose(np.exp(s.log_q), pi[s.ids - NUM_RESERVED], rtol=1e-6)
        counts[s.ids] += 1
    freq = counts[NUM_RESERVED:] / draws
    assert np.all(freq[head] == 1.0)
    # Each item's share of the draws is its inclusion probability (binomial, 5 sd).
    sd = np.sqrt(pi * (1 - pi) / draws) + 1e-9
    assert np.all(np.abs(freq - pi) <= 5 * sd)
    # Seeded; the whole catalog (or 0) is the exact softmax.
    np.testing.assert_array_equal(item_sample(lp, 40, 7).ids, item_sample(lp, 40, 7).ids)
    for size in (0, 100, 200, 500):  # 100 of 200 items: half the catalog
        exact = item_sample(lp, size, 0)
        assert exact.exact and exact.ids.tolist() == list(range(NUM_RESERVED, 203))
        assert not exact.log_q.any()


def test_item_sample_estimates_the_softmax_normalizer_without_bias():
    lp = _zipf_log_pop(303)
    x = np.exp(np.random.default_rng(0).normal(size=303))  # any positive per-item terms
    x[:NUM_RESERVED] = 0
    estimates = []
    for seed in range(2000):
        s = item_sample(lp, 30, seed)
        estimates.append(np.sum(x[s.ids] * np.exp(-s.log_q.astype(np.float64))))
    estimates = np.array(estimates)
    se = estimates.std() / np.sqrt(estimates.size)
    assert abs(estimates.mean() - x.sum()) < 4 * se  # Horvitz-Thompson: unbiased


def _world(n=40, v=30, d=3, seed=0):
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(n, d)).astype(np.float32)
    items = rng.normal(size=(v, d)).astype(np.float32)
    targets = rng.integers(NUM_RESERVED, v, n)
    history = rng.integers(NUM_RESERVED, v, (n, 4))
    history[:, -1] = 0  # padding
    history[history == targets[:, None]] = 0  # no target in its own history
    return users, items, targets, _zipf_log_pop(v), history


def test_the_full_catalog_path_is_the_exact_softmax_and_a_repeat_target_is_impossible():
    users, items, targets, lp, history = _world()
    history[0, 0] = targets[0]  # user 0's next item is in its (excluded) history
    family = BilinearFamily(users, items, targets, lp, history)
    assert family.sample.exact
    theta = np.random.default_rng(1).normal(size=2 + 9) * 0.3
    rows = np.arange(40)
    z = family.logits(theta, rows).astype(np.float64)
    z[:, :NUM_RESERVED] = -np.inf
    for r in rows:
        z[r, history[r][history[r] > 0]] = -np.inf
    expect = z[rows, targets] - np.log(np.exp(z).sum(axis=1))  # -inf for user 0
    np.testing.assert_allclose(family.log_lik(theta, rows), expect, rtol=1e-5)
    assert family.log_lik(theta, rows)[0] == -np.inf


def _objective(family, rows, c, theta):
    """(loss, gradient) of `fit`'s objective at ``theta`` (through a fake L-BFGS)."""
    captured = {}

    def fake_minimize(fun, x0, **kw):
        captured["value"], captured["grad"] = fun(x0)
        return x0

    orig = linear._minimize
    linear._minimize = fake_minimize
    try:
        family.fit(rows, c, init=theta)
    finally:
        linear._minimize = orig
    return captured["value"], captured["grad"]


def test_sampled_objective_and_its_gradient_by_hand_and_by_finite_differences():
    users, items, targets, lp, history = _world(v=60)
    sample = item_sample(lp, 12, 3)
    assert not sample.exact
    family = BilinearFamily(users, items, targets, lp, history, sample=sample)
    rows = np.arange(40)
    theta = np.random.default_rng(2).normal(size=2 + 9) * 0.3
    c = 0.5

    def by_hand(t):
        # log p_r = s_rt - log(exp(s_rt) + sum over sampled j != t, not in history of
        # exp(s_rj) / pi_j), the penalty on dW, per row.
        z = family.logits(t, rows).astype(np.float64)
        total = 0.0
        for r in rows:
            keep = [(j, q) for j, q in zip(sample.ids, sample.log_q)
                    if j != targets[r] and j not in history[r]]  # fmt: skip
            terms = [z[r, targets[r]]] + [z[r, j] - q for j, q in keep]
            total -= z[r, targets[r]] - np.logaddexp.reduce(terms)
        dw = t[2:]
        return (total + 0.5 / c * (dw * dw).sum()) / rows.size

    value, grad = _objective(family, rows, c, theta)
    assert value == pytest.approx(by_hand(theta), rel=1e-5)
    free = np.flatnonzero(family._free(c))
    eps = 1e-3
    numeric = []
    for i in free:
        up, down = theta.copy(), theta.copy()
        up[i] += eps
        down[i] -= eps
        numeric.append((by_hand(up) - by_hand(down)) / (2 * eps))
    np.testing.assert_allclose(grad, numeric, rtol=2e-2, atol=2e-4)


# --------------------------------------------------------------------------
# Against the exact probe, on a next-item world with popularity and taste


def _probe_world(n=3000, v=603, d=8, seed=0, signal=0.8):
    """Users and items in one d-space; histories and the next item drawn from
    softmax(signal u.e + log Zipf popularity), the next item never in the history."""
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(n, d)).astype(np.float32)
    items = rng.normal(size=(v, d)).astype(np.float32) / np.sqrt(d)
    items[:NUM_RESERVED] = 0
    logits = signal * users @ items.T * np.sqrt(d) + _zipf_log_pop(v)
    logits[:, :NUM_RESERVED] = -np.inf
    g = rng.gumbel(size=(n, v))  # top-6 by Gumbel: 5 history items, then the next
    order = np.argsort(-(logits + g), axis=1)[:, :6]
    history, target = order[:, :5], order[:, 5]
    ids = {"train": np.array([f"u{i}".encode() for i in range(n)], dtype=object)}
    pop = Population.make(ids, ("train",))
    return users, items, history, target, pop


def _context(world, negatives: int, selection_rows: int = 0) -> tuple[ProbeContext, Contender]:
    users, items, history, target, pop = world
    protocol = Protocol(probe_folds=3, users=("train",))
    ctx = ProbeContext(
        population=pop,
        labels={NEXT_ITEM: target},
        history=history,
        num_items=items.shape[0],
        item_counts=item_counts(history, items.shape[0]),
        folds=protocol.folds(pop),
        settings=EvalSettings(
            next_item_c_grid=(1e-3, 1e-2, 1e-1),
            next_item_negatives=negatives,
            next_item_selection_rows=selection_rows,
        ),
        protocol=protocol,
    )
    return ctx, Contender("bt", 0, users, items)


def _bootstrap_ci(values: np.ndarray) -> tuple[float, float]:
    res = scipy.stats.bootstrap((values,), np.mean, n_resamples=2000, method="percentile",
                                random_state=0)  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


# At 100% labels: ~15 s on 2 quiet cores (20x the labelled users of 5%).
@pytest.mark.parametrize("fraction", [0.05, pytest.param(1.0, marks=pytest.mark.slow)])
def test_sampled_probe_scores_inside_the_exact_probes_intervals(fraction):
    # 600 items, the fits' softmax over 64 of them (11%): every user's HR@10 and NDCG@10
    # (full-catalog ranks) fall inside the 95% intervals of the exact probe's.
    world = _probe_world()
    out = {}
    for negatives in (0, 64):
        ctx, bt = _context(world, negatives)
        units, fits = probe_contender(ctx, bt, NEXT_ITEM, fraction, seed=0)
        out[negatives] = (units, fits)
    exact, sampled = out[0][0], out[64][0]
    np.testing.assert_array_equal(exact.user, sampled.user)
    for gains in (metrics.hits_at_k, metrics.ndcg_gains_at_k):
        ref, new = gains(exact.rank, 10), gains(sampled.rank, 10)
        lo, hi = _bootstrap_ci(ref)
        assert lo <= new.mean() <= hi, (gains.__name__, new.mean(), (lo, ref.mean(), hi))
    popularity = metrics.hits_at_k(_popularity_ranks(world), 10).mean()
    assert metrics.hits_at_k(sampled.rank, 10).mean() > popularity + 0.02  # it learnt something


# ~12 s on 2 quiet cores (four probes of 2,000 labelled users per fold). In the default
# suite: the subsample itself (below), the sampled probe against the exact one (above, 5%).
@pytest.mark.slow
def test_c_selected_on_a_subsample_scores_inside_the_exact_selections_intervals():
    # At 100% labels each fold has 2,000 labelled users; C is chosen by cross-validation
    # on 400 of them and refitted on all 2,000: every user's HR@10 and NDCG@10 fall
    # inside the 95% intervals of the probe selected on all of them. The sampled softmax
    # of a large catalog, where labelled users are many (a catalog under 2,048 items is
    # fitted exactly, and there the selection on all rows is no different).
    world = _probe_world()
    negatives = 64
    out = {}
    for rows in (0, 400):
        ctx, bt = _context(world, negatives, selection_rows=rows)
        out[rows] = probe_contender(ctx, bt, NEXT_ITEM, 1.0, seed=0)
    (exact, exact_fits), (sub, sub_fits) = out[0], out[400]
    np.testing.assert_array_equal(exact.user, sub.user)
    for e, f in zip(exact_fits, sub_fits):
        assert e["n_labelled"] == f["n_labelled"] > 1900  # the refit sees every labelled user
        assert e["selection_rows"] == e["n_labelled"] and f["selection_rows"] == 400
    for gains in (metrics.hits_at_k, metrics.ndcg_gains_at_k):
        ref, new = gains(exact.rank, 10), gains(sub.rank, 10)
        lo, hi = _bootstrap_ci(ref)
        assert lo <= new.mean() <= hi, (gains.__name__, new.mean(), (lo, ref.mean(), hi))
    popularity = metrics.hits_at_k(_popularity_ranks(world), 10).mean()
    assert metrics.hits_at_k(sub.rank, 10).mean() > popularity + 0.02  # it learnt something
    # Below the threshold nothing changes: 5% labels (100 per fold) select on all rows.
    small = {}
    for rows in (0, 400):
        ctx, bt = _context(world, negatives, selection_rows=rows)
        small[rows] = probe_contender(ctx, bt, NEXT_ITEM, 0.05, seed=0)[0]
    np.testing.assert_array_equal(small[0].rank, small[400].rank)


def test_selection_subsample_takes_whole_groups_seeded_and_everything_when_small():
    groups = np.repeat(np.arange(50), np.arange(50) % 4 + 1)  # 50 groups of 1-4 rows
    n = groups.size
    sub = linear.selection_subsample(n, 30, seed=[3, 1], groups=groups)
    assert 30 <= sub.size < 30 + 4 and np.all(np.diff(sub) > 0)
    for g in np.unique(groups[sub]):  # a group is in whole or not at all
        assert np.isin(np.flatnonzero(groups == g), sub).all()
    np.testing.assert_array_equal(sub, linear.selection_subsample(n, 30, [3, 1], groups=groups))
    assert not np.array_equal(sub, linear.selection_subsample(n, 30, [4, 1], groups=groups))
    np.testing.assert_array_equal(linear.selection_subsample(n, n, 0, groups=groups), np.arange(n))
    plain = linear.selection_subsample(1000, 100, seed=0)
    assert plain.size == 100 and np.unique(plain).size == 100


def _popularity_ranks(world):
    ctx, _ = _context(world, 0)
    scores = np.broadcast_to(ctx.log_popularity, (ctx.population.size, ctx.num_items))
    return metrics.target_ranks(scores, world[3], exclude=world[2])


def test_a_next_item_already_in_the_history_is_scored_a_miss_and_never_trained_on():
    users, items, history, target, pop = _probe_world(n=600, v=103)
    history = history.copy()
    history[::7, 0] = target[::7]  # every 7th user bought its next item before
    ctx, bt = _context((users, items, history, target, pop), 32)
    repeat = (history == target[:, None]).any(axis=1)
    for fold in ctx.folds:
        _, labelled, scored = _next_item_rows(ctx, NEXT_ITEM, fold, 1.0, 0)
        assert not repeat[labelled].any() and repeat[scored].any()
    units, _ = probe_contender(ctx, bt, NEXT_ITEM, 1.0, 0)
    assert np.all(np.isinf(units.rank[repeat[units.user]]))
    # The fits converge (a row that can never be right used to make the loss ~1e30).
    ctx_exact, _ = _context((users, items, history, target, pop), 0)
    _, labelled, _ = _next_item_rows(ctx_exact, NEXT_ITEM, ctx_exact.folds[0], 1.0, 0)
    family = bt.next_item_family(target, ctx_exact.log_popularity, history)
    theta = family.fit(labelled, 1e-2)
    assert np.isfinite(family.log_lik(theta, labelled)).all()
    assert (
        family.log_lik(theta, labelled).mean() > family.log_lik(family.initial(), labelled).mean()
    )


def test_item_knn_in_column_blocks_keeps_each_items_top_k_of_the_dense_similarities():
    rng = np.random.default_rng(4)
    bags = scipy.sparse.random(60, 23, density=0.2, random_state=5, format="csr")
    dense = contenders.item_knn(bags)
    cut = contenders.item_knn(bags, top_k=4, block=5)
    assert scipy.sparse.issparse(cut) and cut.shape == (23, 23)
    cut = cut.toarray()
    for j in range(23):
        top = np.sort(dense[:, j])[-4:]
        kept = cut[:, j][cut[:, j] > 0]
        np.testing.assert_allclose(np.sort(kept), top[top > 0], rtol=1e-5)
    # The next-item base score reads a sparse kNN like a dense one.
    knn = contenders.item_knn(bags, top_k=4)
    rows, cols = np.array([0, 5, 7]), np.array([3, 10, 22])
    items = rng.integers(0, 23, 3)
    sparse_score, dense_score = (
        contenders.KnnScore(bags, knn),
        contenders.KnnScore(bags, knn.toarray()),
    )
    np.testing.assert_allclose(sparse_score(rows, cols), dense_score(rows, cols), rtol=1e-6)
    np.testing.assert_allclose(sparse_score.at(rows, items), dense_score.at(rows, items), rtol=1e-6)
    full = (bags @ knn.toarray())[rows]
    np.testing.assert_allclose(dense_score.at(rows, items), full[np.arange(3), items], rtol=1e-5)


def test_bag_of_items_next_item_on_a_catalog_large_enough_to_project_its_bags():
    # Above `bag_projection_above` items the bag floor's user features are a projection;
    # its next-item score still reads the bags (a [N, 256] x [V, V] product would not run).
    users, items, history, target, pop = _probe_world(n=600, v=163)
    ctx, _ = _context((users, items, history, target, pop), 32)
    bag = contenders.bag_of_items(history, 163, np.arange(600), projection_dim=16, knn_top_k=20)
    assert bag.users.shape == (600, 16) and scipy.sparse.issparse(bag.knn)
    units, _ = probe_contender(ctx, bag, NEXT_ITEM, 1.0, seed=0)
    popularity = metrics.hits_at_k(_popularity_ranks((users, items, history, target, pop)), 10)
    assert metrics.hits_at_k(units.rank, 10).mean() >= popularity.mean() - 0.02

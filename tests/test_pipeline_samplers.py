"""Samplers and Q's counter-based draws (METHODS.md, Conventions): exact formulas,
chi-square fits."""

import numpy as np
import pytest
from scipy import stats

from ltpipe.pipeline.minority import MinorityDraws
from ltpipe.pipeline.samplers import (class_probabilities, effective_number_probabilities,
                                      instance_class_probabilities, instance_uniform_weights,
                                      sample_weights)

COUNTS = np.array([400, 120, 40, 12, 5])


def test_class_probabilities_formula():
    np.testing.assert_allclose(class_probabilities(COUNTS, 0), np.full(5, 0.2))
    inv = (1 / COUNTS) / (1 / COUNTS).sum()
    np.testing.assert_allclose(class_probabilities(COUNTS, 1), inv, rtol=1e-12)
    sq = COUNTS ** -0.5 / (COUNTS ** -0.5).sum()
    np.testing.assert_allclose(class_probabilities(COUNTS, 0.5), sq, rtol=1e-12)
    # r = 200 would underflow n^-r in float64 without the rescaling: the rarest class takes all.
    q = class_probabilities(COUNTS, 200)
    assert q[-1] == pytest.approx(1.0) and np.isfinite(q).all()


def test_effective_number_probabilities():
    n = COUNTS
    beta = (n.sum() - 1) / n.sum()
    e = (1 - beta ** n) / (1 - beta)
    expected = (1 / e) / (1 / e).sum()
    np.testing.assert_allclose(effective_number_probabilities(n), expected, rtol=1e-9)
    np.testing.assert_allclose(effective_number_probabilities(n, beta=0.0), np.full(5, 0.2))
    with pytest.raises(ValueError, match="beta"):
        effective_number_probabilities(n, beta=1.0)


def test_sample_weights_give_q_per_class_and_uniform_within():
    labels = np.repeat(np.arange(5), COUNTS)
    q = class_probabilities(COUNTS, 1)
    w = sample_weights(labels, q)
    assert w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(np.bincount(labels, weights=w), q, rtol=1e-12)
    assert np.ptp(w[labels == 2]) == 0  # uniform within a class
    np.testing.assert_allclose(instance_class_probabilities(COUNTS), COUNTS / COUNTS.sum())
    assert instance_uniform_weights(4).tolist() == [0.25] * 4


def test_shard_subset_renormalizes_absent_classes():
    labels = np.array([0, 0, 1])  # classes 2..4 absent from this shard
    w = sample_weights(labels, class_probabilities(COUNTS, 1))
    q = class_probabilities(COUNTS, 1)
    assert w.sum() == pytest.approx(1.0)
    assert w[2] / w[0] == pytest.approx((q[1] / 1) / (q[0] / 2))


def test_empty_classes_and_bad_r():
    with pytest.raises(ValueError, match="class 2 has no samples"):
        class_probabilities([3, 1, 0], 1)
    q = class_probabilities([3, 1, 0], 1, allow_empty=True)
    assert q[2] == 0 and q.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="r: must be"):
        class_probabilities(COUNTS, -1)


@pytest.mark.parametrize("r", [0.0, 0.5, 1.0])
def test_minority_draw_class_frequencies_chi_square(r):
    labels = np.repeat(np.arange(5), COUNTS)[np.random.default_rng(0).permutation(COUNTS.sum())]
    draws = MinorityDraws.for_r(labels, COUNTS, r, seed=7, rank=0)
    ids = np.concatenate([draws.draw(epoch=0, step=s, size=256) for s in range(90)])  # 23,040
    observed = np.bincount(labels[ids], minlength=5)
    expected = class_probabilities(COUNTS, r) * ids.size
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # the same statistic rejects P's class frequencies: the test can fail
    wrong = COUNTS / COUNTS.sum() * ids.size
    assert stats.chisquare(observed, wrong).pvalue < 1e-3
    # uniform within the head class
    head = ids[labels[ids] == 0]
    within = np.bincount(head, minlength=labels.size)[labels == 0]
    assert stats.chisquare(within).pvalue > 1e-3


def test_draws_are_a_pure_function_of_the_key():
    labels = np.repeat(np.arange(5), COUNTS)
    a = MinorityDraws.for_r(labels, COUNTS, 1.0, seed=3, rank=1)
    b = MinorityDraws.for_r(labels, COUNTS, 1.0, seed=3, rank=1)
    assert np.array_equal(a.draw(2, 5, 64), b.draw(2, 5, 64))
    others = [a.draw(2, 6, 64), a.draw(3, 5, 64), MinorityDraws.for_r(
        labels, COUNTS, 1.0, seed=3, rank=0).draw(2, 5, 64)]
    assert all(not np.array_equal(a.draw(2, 5, 64), o) for o in others)


def test_draws_skip_disallowed_samples():
    labels = np.repeat(np.arange(3), [5, 3, 2])
    allowed = np.ones(10, bool)
    allowed[[8, 9]] = False  # every sample of class 2 is corrupt
    d = MinorityDraws.for_r(labels, [5, 3, 2], 1.0, seed=0, rank=0, allowed=allowed)
    ids = np.concatenate([d.draw(0, s, 100) for s in range(20)])
    assert allowed[ids].all() and d.class_probs[2] == 0

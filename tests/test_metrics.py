"""Metric functions against hand-computed cases."""

import math

import numpy as np
import pytest

from mirec import metrics as M


def test_recall_hit_ndcg_hand_computed():
    rec = np.array([5, 1, 9, 2, 7])
    tgt = np.array([1, 2, 3, 2])  # set {1, 2, 3}
    assert M.recall_at(rec, tgt, 5) == pytest.approx(2 / 3)
    assert M.recall_at(rec, tgt, 2) == pytest.approx(1 / 3)
    assert M.hit_at(rec, tgt, 1) == 0.0 and M.hit_at(rec, tgt, 2) == 1.0
    # hits at ranks 1 and 3 (0-based) -> 1/log2(3) + 1/log2(5); IDCG over min(3, 5) = 3 positions
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert M.ndcg_at(rec, tgt, 5) == pytest.approx(dcg / idcg)
    # IDCG is cut at N when there are more targets than N
    assert M.ndcg_at(np.array([1, 2]), np.array([1, 2, 3, 4]), 2) == pytest.approx(1.0)
    assert M.recall_at(np.array([1, 2]), np.array([1, 2, 3, 4]), 2) == pytest.approx(0.5)
    assert M.ndcg_at(rec, np.array([42]), 5) == 0.0


def test_category_diversity_and_ild():
    cat = np.array([0, 0, 1, 2])
    # list [0, 1, 2]: categories 0, 0, 1 -> pairs (0,1) same, (0,2), (1,2) differ -> 2/3
    assert M.category_diversity(np.array([0, 1, 2]), cat) == pytest.approx(2 / 3)
    assert M.category_diversity(np.array([0, 1]), cat) == 0.0
    assert math.isnan(M.category_diversity(np.array([0]), cat))
    vec = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # pairs: cos(a,b)=0, cos(a,c)=cos(b,c)=1/sqrt2 -> mean 1 - cos = 1 - (2/sqrt2)/3
    assert M.embedding_ild(np.array([0, 1, 2]), vec) == pytest.approx(1 - (2 / math.sqrt(2)) / 3)


def test_coverage_and_gini():
    lists = [np.array([0, 1]), np.array([1, 2])]
    assert M.coverage(lists, 10) == pytest.approx(0.3)
    assert M.gini(np.array([1, 1, 1, 1])) == pytest.approx(0.0)
    assert M.gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)  # (n-1)/n for one item holding everything
    # never-recommended items count: exposure [1, 2, 1, 0]
    assert M.exposure_gini(lists, 4) == pytest.approx(M.gini(np.array([1, 2, 1, 0])))
    assert M.gini(np.array([1, 2, 1, 0])) == pytest.approx(0.375)


def test_collapse_measures():
    assert M.mean_pairwise_cos(np.array([[1.0, 0], [2.0, 0]])) == pytest.approx(1.0)
    assert M.mean_pairwise_cos(np.array([[1.0, 0], [0, 1.0], [-1.0, 0]])) == pytest.approx(-1 / 3)
    assert math.isnan(M.mean_pairwise_cos(np.ones((1, 3))))
    u = M.interest_usage([np.array([0, 0, 0]), np.array([0, 1, 1, 0])], k=2)
    assert u["single_interest_share"] == 0.5
    assert u["effective_interests"] == pytest.approx((1 + 2) / 2)
    pooled = np.array([5, 2]) / 7
    assert u["usage_entropy"] == pytest.approx(-(pooled * np.log(pooled)).sum())
    aux = np.array([[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]])  # K=2, L=3, last position padding
    mask = np.array([[True, True, False]])
    h, hn = M.routing_entropy(aux, mask)
    assert h == pytest.approx(math.log(2) / 2)
    assert hn == pytest.approx(0.5)

"""Models: shapes, masking (padding must not change results), MIND's per-sample routing noise,
selection, baselines and the Recommender path."""

import numpy as np
import pytest
import torch

from mirec.models import ItemKNN, ModelConfig, Popularity, available_models, build, pad_histories, squash
from mirec.retrieval.aggregators import candidate_pool
from mirec.retrieval.recommender import Recommender

NEURAL = ["mind", "comirec_sa", "comirec_dr", "single", "mean", "youtubednn", "sasrec"]
SINGLE = ("single", "mean", "youtubednn", "sasrec")


def _model(name, **kw):
    torch.manual_seed(0)
    return build(ModelConfig(name=name, n_items=50, dim=8, K=3, max_len=12, **kw)).eval()


def test_registry_lists_all_models():
    assert set(NEURAL) <= set(available_models())
    with pytest.raises(KeyError):
        build(ModelConfig(name="nope", n_items=5))
    with pytest.raises(ValueError):
        build(ModelConfig(name="mind"))  # n_items not set


@pytest.mark.parametrize("name", NEURAL)
def test_shapes_and_padding_invariance(name):
    m = _model(name)
    K = 1 if name in SINGLE else 3
    hist = [np.array([1, 5, 7, 9]), np.array([3, 3, 20, 40, 41, 2, 8])]
    seq, mask = pad_histories(hist, 12)  # [2, 7], right padded
    v = m.interests(seq, mask)
    assert v.shape == (2, K, 8) and m.aux.shape == (2, K, 7)
    assert torch.all(m.aux[0, :, 4:] == 0)  # no weight on padding
    # more padding, and garbage ids under the mask, change nothing
    seq2 = torch.cat([seq, torch.randint(1, 51, (2, 5))], 1)
    mask2 = torch.cat([mask, torch.zeros(2, 5, dtype=torch.bool)], 1)
    seq2[0, 4:7] = torch.tensor([11, 12, 13])
    v2 = m.interests(seq2, mask2)
    torch.testing.assert_close(v, v2, rtol=1e-5, atol=1e-6)
    # a user's result does not depend on the other users in the batch
    v_alone = m.interests(*pad_histories(hist[:1], 12))
    torch.testing.assert_close(v[:1], v_alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NEURAL)
def test_truncates_to_max_len(name):
    m = _model(name)
    long = np.arange(30) % 50
    a = m.interests(*pad_histories([long], 12))
    b = m.interests(*pad_histories([long[-12:]], 12))
    torch.testing.assert_close(a, b)


def test_mind_routing_logits_random_per_sample_and_call_not_trainable():
    m = _model("mind").train()
    names = [n for n, _ in m.named_parameters()]
    assert not any("b_" in n or "routing" in n for n in names)  # logits are not parameters
    seq, mask = pad_histories([np.array([1, 2, 3, 4, 5])] * 2, 12)
    torch.manual_seed(1)
    v1 = m.interests(seq, mask)
    assert not torch.allclose(v1[0], v1[1])  # same history, different per-sample initial logits
    v2 = m.interests(seq, mask)
    assert not torch.allclose(v1, v2)  # fresh draw on every call (not shared across batches)
    m.eval()  # serving: deterministic
    torch.testing.assert_close(m.interests(seq, mask), m.interests(seq, mask))


def test_squash_formula():
    z = torch.tensor([[3.0, 4.0]])
    u = squash(z)
    torch.testing.assert_close(u, torch.tensor([[25 / 26 * 0.6, 25 / 26 * 0.8]]))


def test_selection_hard_and_label_aware():
    V = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # [1, K=2, d=2]
    e = torch.tensor([[1.0, 0.2]])  # scores 1.0, 0.4
    m = _model("comirec_sa", selection="hard")
    torch.testing.assert_close(m.select(V, e), V[:, 0])
    assert _model("comirec_sa").selection == "max" and _model("mind").selection == "max"  # defaults
    torch.testing.assert_close(_model("comirec_sa").select(V, e), V[:, 0])  # max: the positive's best interest
    mind = _model("mind", pow_p=1.0, selection="label_aware")
    a = torch.softmax(torch.tensor([1.0, 0.4]), 0)
    torch.testing.assert_close(mind.select(V, e), (a[:, None] * V[0]).sum(0, keepdim=True))
    hard_ish = _model("mind", pow_p=60.0, selection="label_aware")  # large p approaches the hard max
    torch.testing.assert_close(hard_ish.select(V * 2, e), V[:, 0] * 2, atol=1e-3, rtol=0)


def test_selection_scale_and_sampled_follows_softmax():
    V = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]).expand(4000, -1, -1)  # [B, K=2, d=2]
    e = torch.tensor([[0.6, 0.3]]).expand(4000, -1)  # scores 0.6, 0.3
    m = _model("comirec_sa", selection="sampled")
    torch.manual_seed(0)
    picked0 = (m.select(V, e, scale=5.0)[:, 0] == 1).float().mean().item()
    want = torch.softmax(torch.tensor([3.0, 1.5]), 0)[0].item()  # softmax(scale * scores)
    assert abs(picked0 - want) < 0.03
    picked_cold = (m.select(V, e, scale=0.01)[:, 0] == 1).float().mean().item()
    assert abs(picked_cold - 0.5) < 0.05  # a near-zero scale: uniform choice
    hard = _model("comirec_sa", selection="hard")
    assert (hard.select(V, e, scale=5.0)[:, 0] == 1).all()


def test_comirec_dr_trains_with_soft_selection_so_every_capsule_gets_gradient():
    # measured default (docs/models.md, "Interest selection"): the argmax winner alone would take every update
    assert _model("comirec_dr").selection == "sampled"
    assert _model("mind").selection == "max" and _model("comirec_sa").selection == "max"
    V = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]]).repeat(256, 1, 1).requires_grad_()  # [B, K=2, d=2]
    e = torch.tensor([[1.0, 0.0]]).expand(256, -1)  # interest 0 always wins the argmax
    torch.manual_seed(0)
    for selection, both_learn in (("hard", False), ("sampled", True)):
        V.grad = None
        _model("comirec_dr", selection=selection).select(V, e, scale=5.0).sum().backward()
        reached = (V.grad.abs().sum((0, 2)) > 0).tolist()  # [K]: did interest k get any gradient
        assert reached == [True, both_learn]


def test_sasrec_is_causal_and_reads_the_last_item():
    m = _model("sasrec")
    h = np.array([4, 9, 2, 7])
    a = m.interests(*pad_histories([h], 12))
    b = m.interests(*pad_histories([np.array([4, 9, 2, 30])], 12))
    assert not torch.allclose(a, b)  # the last item changes the user vector
    # the output at a position never depends on later positions: the prefix [4, 9, 2] alone = its own run
    c = m.interests(*pad_histories([h[:3]], 12))
    seq, mask = pad_histories([h], 12)
    mask_prefix = mask.clone()
    mask_prefix[0, 3] = False
    torch.testing.assert_close(m.interests(seq, mask_prefix), c, rtol=1e-5, atol=1e-6)


def test_itemknn_pruning_and_history_window():
    seqs = {0: np.array([0, 1, 2, 3]), 1: np.array([0, 1]), 2: np.array([0, 2]), 3: np.array([1, 3])}
    full = ItemKNN.fit(seqs, 4)
    pruned = ItemKNN.fit(seqs, 4, neighbors=1)
    assert (np.diff(pruned.sim.indptr) <= 1).all() and (np.diff(full.sim.indptr) == 3).all()
    # each pruned row keeps its strongest neighbour
    assert all(pruned.sim[i].toarray().max() == full.sim[i].toarray().max() for i in range(4))
    last1 = ItemKNN.fit(seqs, 4, history_len=1)
    np.testing.assert_allclose(last1.score_histories([np.array([2, 3])])[0], full.sim[3].toarray()[0])
    np.testing.assert_allclose(full.score_histories([np.array([2, 3])])[0], (full.sim[2] + full.sim[3]).toarray()[0])


def test_popularity_and_itemknn_hand_computed():
    seqs = {0: np.array([0, 1, 2]), 1: np.array([0, 1]), 2: np.array([2, 3, 3])}
    pop = Popularity.fit(seqs, 5)
    assert pop.pop.tolist() == [2, 2, 2, 2, 0]
    knn = ItemKNN.fit(seqs, 5)
    # users as sets: {0,1,2}, {0,1}, {2,3}; c01 = 2, c0 = c1 = 2 -> sim 1; c02 = 1, c2 = 2 -> 0.5; c23 = 1, c3 = 1
    S = knn.sim.toarray()
    assert S[0, 1] == pytest.approx(1.0) and S[0, 2] == pytest.approx(0.5) and S[2, 3] == pytest.approx(1 / np.sqrt(2))
    assert S[0, 0] == 0 and S[4].sum() == 0
    scores = knn.score_histories([np.array([0, 0])])  # repeated items count once
    np.testing.assert_allclose(scores[0], S[0])


def test_recommender_equals_index_search_plus_merge_and_excludes_seen():
    m = _model("comirec_sa")
    rec = Recommender(m, items=np.arange(50) % 4, item_popularity=np.arange(50)[::-1])
    h = np.array([1, 5, 7])
    out = rec.recommend([h], n=10, exclude_seen=False)[0]
    v, _ = rec.encode([h])
    s, it = rec.index.search(v[0], 10)
    items, scores, inter = candidate_pool(s, it, np.empty(0, np.int64))
    assert [r.item_idx for r in out] == items[:10].tolist()
    assert [r.interest for r in out] == inter[:10].tolist()
    # item vectors are the embedding rows 1..N, L2-normalised under cosine similarity (the default)
    rows = m.item_emb.weight[1:].detach().numpy()
    np.testing.assert_allclose(rec.item_vectors, rows / np.linalg.norm(rows, axis=1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(v[0], axis=1), 1.0, rtol=1e-5)  # interests searched at unit length
    dot = Recommender(_model("comirec_sa", similarity="dot"), items=np.arange(50) % 4)
    np.testing.assert_allclose(dot.item_vectors, rows)
    seen = rec.recommend([h], n=10, exclude_seen=True)[0]
    assert len(seen) == 10 and not set(h) & {r.item_idx for r in seen}
    cold = rec.recommend([np.array([], np.int64)], n=3)[0]
    assert [r.item_idx for r in cold] == [0, 1, 2]  # popularity fallback
    vecs, stats = rec.interests([h])
    assert vecs.shape == (1, 3, 8) and stats[0]["k"] == 3 and len(stats[0]["interest_norms"]) == 3


def test_recommender_baseline_path():
    pop = Popularity(np.array([5.0, 1.0, 3.0, 4.0]))
    rec = Recommender(pop, items=np.zeros(4, np.int64), item_popularity=pop.pop)
    assert [r.item_idx for r in rec.recommend([np.array([3])], n=2)[0]] == [0, 2]
    assert [r.item_idx for r in rec.recommend([np.array([3])], n=2, exclude_seen=False)[0]] == [0, 3]


def test_interest_head_is_shared_across_interests_and_used_for_serving():
    plain, head = _model("comirec_sa", interest_head="none"), _model("comirec_sa", interest_head="mlp")
    assert plain.head is None and head.head is not None
    # their defaults: the head on ComiRec-SA, its one-head twin and MIND (measured, docs/models.md); not on DR
    assert _model("comirec_sa").head is not None and _model("single").head is not None
    assert _model("mind").head is not None and _model("comirec_dr").head is None
    seq, mask = pad_histories([np.array([1, 5, 7, 9])], 12)
    raw = head.interests(seq, mask)  # the paper's interests, before the head
    served = head.serving_interests(seq, mask)
    want = torch.nn.functional.normalize(raw + head.head(raw), dim=-1)  # one MLP for every interest
    torch.testing.assert_close(served, want)
    assert sum(p.numel() for p in head.parameters()) - sum(p.numel() for p in plain.parameters()) == 8 * 16 * 2 + 16 + 8

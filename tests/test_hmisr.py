"""HMISR (mirec/models/hmisr.py): shapes and padding, every loss term against a hand computation, the gate's
K_u on crafted users, the learned d_u, and the serving path (inactive interests, d_u into the personalised MMR)."""

import math

import numpy as np
import pytest
import torch

from mirec.models import ModelConfig, build, pad_histories
from mirec.models import hmisr as H
from mirec.retrieval import diversity as D
from mirec.retrieval.aggregators import AggregationContext, candidate_pool
from mirec.retrieval.recommender import Recommender

N_ITEMS, C = 40, 4  # items 0..39, category = item_idx // 10


class _Data:  # the two fields attach_data reads
    item_category = np.arange(N_ITEMS) // 10
    item_popularity = np.arange(N_ITEMS, 0, -1).astype(float)


def _model(**opts):
    torch.manual_seed(0)
    m = build(ModelConfig(name="hmisr", n_items=N_ITEMS, dim=8, K=C, max_len=12, options=opts))
    m.attach_data(_Data())
    return m.eval()


def _crafted(gate_prior: float = 0.0):
    """Every category k points along basis k (item vectors = e_k), the encoder is the identity (zeroed attention
    output / FFN, no positions), the assignment is sharp; the gate's learned part is g = σ(4·log(K m_k) + 2): an
    interest is on when it holds more than ~1/(K·e^0.5) ≈ 15% of the history (the d_u prior off by default)."""
    m = _model(gate_prior=gate_prior)
    with torch.no_grad():
        for p in (m.block.attn.out_proj.weight, m.block.attn.out_proj.bias, m.block.ffn[2].weight, m.block.ffn[2].bias,
                  m.pos_emb.weight, m.fine[2].weight, m.fine[2].bias):  # v_k = c_k
            p.zero_()
        E = torch.zeros(N_ITEMS + 1, 8)
        E[1:, :C] = torch.eye(C)[torch.as_tensor(_Data.item_category)]
        m.item_emb.weight.copy_(E)
        m.basis.copy_(torch.eye(C, 8))
        m.W_a.weight.copy_(torch.eye(8) * 40)
        g1, g2 = m.gate[0], m.gate[2]
        g1.weight.zero_(), g1.bias.zero_(), g2.weight.zero_()
        g1.weight[0, 0] = 1.0  # relu(log(K m_k)) ... and a second unit for the negative side
        g1.weight[1, 0] = -1.0
        g2.weight[0, 0], g2.weight[0, 1] = 4.0, -4.0
        g2.bias.fill_(2.0)
    return m


def test_registered_shapes_padding_and_batch_invariance():
    m = _model()
    hist = [np.array([1, 5, 7, 19]), np.array([3, 3, 20, 33, 11, 2, 8])]
    seq, mask = pad_histories(hist, 12)
    v = m.serving_interests(seq, mask)
    assert v.shape == (2, C, 8) and m.aux.shape == (2, C, 7) and m.user_diversity.shape == (2,)
    assert torch.all(m.aux[0, :, 4:] == 0)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(2, C))  # cosine: unit vectors in score space
    seq2 = torch.cat([seq, torch.randint(1, N_ITEMS + 1, (2, 4))], 1)  # garbage ids under the mask
    mask2 = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], 1)
    seq2[0, 4:7] = torch.tensor([11, 12, 13])
    torch.testing.assert_close(v, m.serving_interests(seq2, mask2), rtol=1e-5, atol=1e-6)
    d2 = m.user_diversity.clone()
    v1 = m.serving_interests(*pad_histories(hist[:1], 12))
    torch.testing.assert_close(v[:1], v1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d2[:1], m.user_diversity, rtol=1e-5, atol=1e-6)
    # the training forward gives every auxiliary loss as a finite scalar; they back-propagate
    m.train()
    m.serving_interests(seq, mask)
    losses = m.training_terms()["losses"]
    assert set(losses) == {"basis", "entropy", "margin", "recon", "consistency", "d_u", "sparsity"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert m.gate[2].weight.grad is not None and m.du_net[2].weight.grad is not None


def test_basis_orthogonality_by_hand():
    B = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # unit rows (1, 0), (.707, .707): off-diagonal cos .7071
    assert H.basis_orthogonality(B).item() == pytest.approx(2 * 0.5, abs=1e-6)
    assert H.basis_orthogonality(torch.eye(3)).item() == pytest.approx(0.0, abs=1e-9)


def test_assignment_entropy_by_hand_is_over_the_batch_and_ignores_padding():
    alpha = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.3, 0.7]],   # user 0: third position is padding
                          [[0.0, 1.0], [1.0, 0.0], [9.0, 9.0]]])  # user 1: third is padding
    mask = torch.tensor([[True, True, False], [True, True, False]])
    p = np.array([3.0, 1.0]) / 4  # 3 of the 4 real positions in basis 0
    assert H.assignment_neg_entropy(alpha, mask).item() == pytest.approx(float((p * np.log(p)).sum()), abs=1e-6)


def test_margin_orthogonality_by_hand_only_above_the_margin_and_active_pairs():
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([math.cos(0.5), math.sin(0.5)])  # cos(a, b) = .8776
    c = torch.tensor([0.0, 1.0])  # cos(a, c) = 0, cos(b, c) = .4794
    V = torch.stack([a, b, c])[None]  # [1, 3, 2]
    all_on = torch.ones(1, 3, dtype=torch.bool)
    want = ((math.cos(0.5) - 0.3) + 0 + (math.sin(0.5) - 0.3)) / 3
    assert H.margin_orthogonality(V, all_on, 0.3).item() == pytest.approx(want, abs=1e-6)
    assert H.margin_orthogonality(V, all_on, 0.9).item() == pytest.approx(0.0, abs=1e-9)  # related interests stay
    only_ab = torch.tensor([[True, True, False]])
    assert H.margin_orthogonality(V, only_ab, 0.3).item() == pytest.approx(math.cos(0.5) - 0.3, abs=1e-6)
    one = torch.tensor([[True, False, False]])
    assert H.margin_orthogonality(V, one, 0.3).item() == 0.0  # no pair, no cost


def test_reconstruction_by_hand():
    h = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    alpha = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]]])
    c = torch.tensor([[[3.0, 0.0], [0.0, 1.0]]])
    mask = torch.tensor([[True, True, False]])
    # position 0: (1,0) - (1,0) = 0; position 1: (0,1) - (.5,.5) -> .25 + .25 = .5; mean over 2 real positions
    assert H.reconstruction(h, alpha, c, mask).item() == pytest.approx(0.25, abs=1e-6)


def test_consistency_by_hand():
    logits = torch.tensor([[[2.0, 0.0], [1.0, 1.0]]])  # fine interest 0 -> basket 0 with softmax .8808; 1 -> .5
    act = torch.tensor([[True, True]])
    want = -(math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(0.5)) / 2
    assert H.consistency(logits, act).item() == pytest.approx(want, abs=1e-6)
    assert H.consistency(logits, torch.tensor([[False, True]])).item() == pytest.approx(-math.log(0.5), abs=1e-6)


def test_history_features_and_spread_match_the_serving_definitions():
    cats = np.arange(N_ITEMS) // 10
    hists = [np.array([0, 1, 12, 13, 25]), np.array([3, 4, 5]), np.array([7]), np.array([0, 11, 21, 31, 1, 12])]
    seq, mask = pad_histories(hists, 12)
    ent, sw = H.history_diversity_features(torch.as_tensor(np.r_[-1, cats])[seq], mask, C)
    for i, h in enumerate(hists):
        f = D.history_features(h, cats, None, C)
        assert ent[i].item() == pytest.approx(0.0 if len(h) < 2 else f["entropy"], abs=1e-6)
        assert sw[i].item() == pytest.approx(0.0 if len(h) < 2 else f["switch"], abs=1e-6)
    v = torch.randn(3, C, 8)
    w = torch.softmax(torch.randn(3, C), -1)
    got = H.rao_spread(v, w)
    for i in range(3):
        assert got[i].item() == pytest.approx(D.interest_spread(v[i].numpy(), w[i].numpy()), abs=1e-5)


def test_sparsity_and_d_u_terms_by_hand():
    m = _model(lambda_sparsity=0.5, lambda_du=2.0).train()
    hists = [np.array([0, 1, 12, 13, 25]), np.array([3, 4, 5, 6])]
    seq, mask = pad_histories(hists, 12)
    m.serving_interests(seq, mask)
    t = m.training_terms()["losses"]
    d, g = m.user_diversity, m.gates
    y = torch.tensor([0.5 * (D.history_features(h, _Data.item_category, None, C)["entropy"]
                             + D.history_features(h, _Data.item_category, None, C)["switch"]) for h in hists])
    k = m.k_active.float()  # the straight-through count: hard in value
    assert t["sparsity"].item() == pytest.approx(0.5 * ((k - 1 - (C - 1) * d) ** 2).mean().item(), rel=1e-5)
    assert t["d_u"].item() == pytest.approx(2.0 * ((d - y) ** 2).mean().item(), rel=1e-5)
    fixed = _model(adaptive_k=False).train()
    fixed.serving_interests(seq, mask)
    assert "sparsity" not in fixed.training_terms()["losses"] and bool((fixed.k_active == C).all())


def test_gate_k_u_small_for_one_category_large_for_many():
    m = _crafted()
    users = [np.array([0, 1, 2, 3, 4, 5, 6, 7]),                       # one category
             np.array([0, 1, 2, 3, 10, 11, 12, 13]),                   # two, evenly
             np.array([0, 1, 2, 10, 11, 12, 20, 21, 22]),              # three
             np.array([0, 1, 10, 11, 20, 21, 30, 31]),                 # four
             np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 30])]                # one dominant + a stray item (10%)
    with torch.no_grad():
        v = m.serving_interests(*pad_histories(users, 12))
    assert m.k_active.tolist() == [1, 2, 3, 4, 1]
    # inactive slots repeat slot 0 and carry no attention mass
    for b, k in enumerate(m.k_active.tolist()):
        for j in range(k, C):
            torch.testing.assert_close(v[b, j], v[b, 0])
            assert float(m.aux[b, j].sum()) == 0.0
    # served through the Recommender: the duplicates collapse, only the active interests supply items
    rec = Recommender(m, items=_Data.item_category, item_popularity=_Data.item_popularity)
    lists = rec.recommend(users, n=10, exclude_seen=False)
    for recs, k in zip(lists, m.k_active.tolist()):
        assert len(recs) == 10 and {r.interest for r in recs} <= set(range(k))
    assert {r.item_idx // 10 for r in lists[0]} == {0}  # the focused user gets only her category
    scores, items, _, _ = rec._candidates(users[3:4], 10)
    it, _, inter = candidate_pool(scores[0], items[0], np.empty(0, np.int64))
    assert len(it) == N_ITEMS and set(inter.tolist()) == set(range(C))  # the broad user: 4 interests, 4 categories


def test_gate_prior_follows_d_u():
    """With the learned correction at 0 the gate keeps round(1 + (K − 1)·d_u) interests, the largest shares first."""
    m = _crafted(gate_prior=4.0)
    with torch.no_grad():
        m.gate[2].weight.zero_(), m.gate[2].bias.zero_()
        l1, l2 = m.du_net[0], m.du_net[2]  # d_u = σ(12·entropy − 5): ≈ 0 for one category, ≈ 1 for an even four
        l1.weight.zero_(), l1.bias.zero_(), l2.weight.zero_()
        l1.weight[0, 0] = 1.0
        l2.weight[0, 0], l2.bias[0] = 12.0, -5.0
        users = [np.arange(8), np.array([0, 1, 2, 3, 10, 11, 12, 13]), np.array([0, 1, 10, 11, 20, 21, 30, 31]),
                 np.array([0, 1, 2, 3, 4, 5, 10, 11])]
        m.serving_interests(*pad_histories(users, 12))
        d = m.user_diversity
        assert d[0] < 0.01 and d[2] > 0.99
        want = torch.round(1 + (C - 1) * d).long()
        assert m.k_active.tolist() == want.tolist() and m.k_active[0] == 1 and m.k_active[2] == C
        # the kept interest of the 6:2 user is her majority category
        v = m.serving_interests(*pad_histories(users[3:], 12))
        assert int(v[0, 0, :C].argmax()) == 0


def test_learned_d_u_is_monotone_in_history_entropy():
    """Fit the d_u network on its own loss term, mean (d_u − y_u)², over histories of 1-4 categories (random
    order): the learned d_u rises with the category entropy of the history."""
    m = _model()
    rng = np.random.default_rng(0)
    hists = []
    for _ in range(64):
        k = int(rng.integers(1, C + 1))
        cats = rng.choice(C, size=k, replace=False)
        hists.append(cats[rng.integers(0, k, size=10)] * 10 + rng.integers(0, 10, size=10))
    with torch.no_grad():
        m.serving_interests(*pad_histories(hists, 12))
    x, y = m.du_features, m.du_label  # the network's inputs and the label of the d_u term (the encoder is fixed)
    opt = torch.optim.Adam(m.du_net.parameters(), lr=0.05)
    for _ in range(300):
        loss = ((torch.sigmoid(m.du_net(x)).squeeze(-1) - y) ** 2).mean()
        opt.zero_grad(), loss.backward(), opt.step()
    probe = [np.arange(8),                                       # entropy 0
             np.array([0, 1, 2, 3, 4, 5, 10, 11]),               # 2 categories, uneven
             np.array([0, 1, 2, 3, 10, 11, 12, 13]),             # 2, even
             np.array([0, 1, 2, 10, 11, 12, 20, 21]),            # 3
             np.array([0, 1, 10, 11, 20, 21, 30, 31])]           # 4
    with torch.no_grad():
        m.serving_interests(*pad_histories(probe, 12))  # grouped by category: few switches
    d = m.user_diversity.tolist()
    ent = [D.history_features(p, _Data.item_category, None, C)["entropy"] for p in probe]
    assert ent == sorted(ent) and d == sorted(d) and d[-1] - d[0] > 0.2, (ent, d)


def test_personalised_aggregator_takes_the_model_d_u():
    m = _crafted()
    users = [np.arange(8), np.array([0, 1, 10, 11, 20, 21, 30, 31])]
    rec = Recommender(m, items=_Data.item_category, item_popularity=_Data.item_popularity)
    extras: dict = {}
    rec.encode(users, extras)
    du = extras["user_diversity"]
    cal = D.DiversityCalibration(source="model").fit(du, target_mean=0.3, alpha=2.0)
    for b, h in enumerate(users):
        ctx = AggregationContext(n=5, item_category=_Data.item_category, history=h, model_diversity=float(du[b]),
                                 params={"d_u_calibration": cal.to_dict()})
        assert D.user_diversity(ctx) == pytest.approx(float(cal.apply(du[b])))
    # a calibration fitted on history features ignores the model's value
    ctx = AggregationContext(n=5, item_category=_Data.item_category, history=users[1], model_diversity=0.99,
                             params={"d_u_calibration": D.DiversityCalibration().to_dict()})
    assert D.user_diversity(ctx) == pytest.approx(D.DiversityCalibration().apply(
        D.raw_score(D.user_features(ctx, D.DiversityCalibration()))))


def test_served_through_the_packaged_model_equals_offline(tmp_path):
    """The MAR directory (weights with the category buffers, model_config with the options, a model-source d_u
    calibration) loaded by the TorchServe service answers what the offline Recommender answers."""
    from mirec.data.schema import IdMap
    from mirec.serving.packaging import stage_candidate
    from mirec.serving.service import RecommendService
    from mirec.serving.testing import assert_same_answer, items_frame

    m = _model()
    items = items_frame(N_ITEMS)
    hists = [np.array([1, 5, 7, 19, 33]), np.arange(8), np.array([0, 11, 22, 33, 2, 13])]
    rec0 = Recommender(m, items=items, item_popularity=items["popularity"].to_numpy())
    extras: dict = {}
    rec0.encode(hists, extras)
    cal = D.DiversityCalibration(source="model").fit(extras["user_diversity"], target_mean=0.5, alpha=3.0)
    params = {"d_u_calibration": cal.to_dict(), "similarity": "category"}
    stage_candidate(tmp_path / "stage", m, m.cfg, items, name="hm", aggregator="personalised",
                    aggregator_params=params, copy_code=False)
    svc = RecommendService.load(tmp_path / "stage", device="cpu")
    rec = Recommender(m, items=items, item_popularity=items["popularity"].to_numpy(), aggregator="personalised",
                      aggregator_params=params)
    offline = rec.recommend(hists, n=10, exclude_seen=True)
    served = svc.handle_batch([{"user_id": f"u{i}", "history": [f"item-{j}" for j in h], "n": 10}
                               for i, h in enumerate(hists)])
    assert isinstance(svc.recommender.model, H.HMISR) and int(svc.recommender.model.n_cat) == C
    for (status, body), off in zip(served, offline):
        assert status == 200
        assert_same_answer(body["items"], [(f"item-{r.item_idx}", r.score, r.interest) for r in off])

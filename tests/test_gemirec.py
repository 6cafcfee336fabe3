"""GemiRec: residual quantisation and its losses by hand, k-means code usage, the stage schedule (model and
training loop), the ε rule and the code cache, padding invariance, AMR/CUR/NMI, served = offline."""

import json
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn

from mirec import metrics as M
from mirec.models import ModelConfig, build, pad_histories
from mirec.models.base import pos_ids
from mirec.models.gemirec import GemiRecOptions, auto_codebook_sizes, kmeans, select_codes

SMALL = {"codebook_sizes": [4, 3, 2], "code_dim": 4, "gpt_layers": 1, "gpt_heads": 2, "gpt_dim": 8,
         "hard_interests": 2, "easy_interests": 3,
         "stages": [{"name": "mirm", "epochs": 1}, {"name": "idmm", "epochs": 1}, {"name": "joint"}]}


def _model(n=40, K=3, **opts):
    torch.manual_seed(0)
    return build(ModelConfig(name="gemirec", n_items=n, dim=8, K=K, max_len=12, options={**SMALL, **opts}))


# ---- IDMM: residual quantisation ----------------------------------------------------------------------
def _hand_model():
    """d = q = 2, C = 2 levels, enc = identity, dec = [I I] (v̂ = e¹ + e²)."""
    m = _model(codebook_sizes=[2, 3], code_dim=2)
    m.enc = nn.Identity()
    m.dec = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        m.dec.weight.copy_(torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]]))
        m.codebooks[0].copy_(torch.tensor([[1.0, 0], [0, 1]]))
        m.codebooks[1].copy_(torch.tensor([[0.2, 0], [0, 0.2], [-0.1, 0.1]]))
    return m


def test_rq_round_trip_codes_and_joint_index():
    m = _hand_model()
    E1, E2 = m.codebooks[0].detach(), m.codebooks[1].detach()
    for a in range(2):
        for b in range(3):  # a vector that IS a dictionary sum quantises to its own codes, residual 0 after C levels
            codes, r, e = m.quantise((E1[a] + E2[b])[None])
            assert codes.tolist() == [[a, b]]
            torch.testing.assert_close(r[0, 1] - e[0, 1], torch.zeros(2))
            flat = m.flat(codes)
            assert int(flat) == a * 3 + b and m.unflat(flat).tolist() == [[a, b]]
            torch.testing.assert_close(m.interest_emb(flat)[0], torch.cat([E1[a], E2[b]]))  # z_quan = concat


def test_idmm_loss_and_gradients_by_hand():
    m = _hand_model()
    v = torch.tensor([[1.2, 0.1]])
    loss, codes = m.idmm_loss(v)
    # r1 = v -> m1 = 0 (e¹ = (1, 0)), r2 = (0.2, 0.1) -> m2 = 0 (e² = (0.2, 0))
    assert codes.tolist() == [[0, 0]]
    rec = 0.0 ** 2 + 0.1 ** 2  # v̂ = e¹ + e² = (1.2, 0)
    emb = (0.2 ** 2 + 0.1 ** 2) + (0.0 ** 2 + 0.1 ** 2)  # ‖sg[r_c] − e_c‖²
    assert float(loss.detach()) == pytest.approx(rec + emb + 0.25 * emb, abs=1e-6)  # + β ‖r_c − sg[e_c]‖², β = 0.25
    loss.backward()
    # the codebooks learn only from the embedding loss: d/de ‖r − e‖² = 2 (e − r)
    torch.testing.assert_close(m.codebooks[0].grad[0], torch.tensor([-0.4, -0.2]))
    torch.testing.assert_close(m.codebooks[1].grad[0], torch.tensor([0.0, -0.2]))
    assert torch.all(m.codebooks[0].grad[1] == 0) and torch.all(m.codebooks[1].grad[1:] == 0)
    # the decoder sees the quantised vector: d/dW ‖v − W z‖² = −2 (v − v̂) zᵀ, z = (e¹, e²) = (1, 0, 0.2, 0)
    torch.testing.assert_close(m.dec.weight.grad, torch.tensor([[0.0, 0, 0, 0], [-0.2, 0, -0.04, 0]]))


def test_straight_through_reaches_the_encoder():
    m = _model()
    v = torch.randn(5, 8)
    loss, _ = m.idmm_loss(v)
    loss.backward()
    assert m.enc[0].weight.grad.abs().sum() > 0 and m.dec[0].weight.grad.abs().sum() > 0


# ---- k-means init -------------------------------------------------------------------------------------
def test_kmeans_recovers_blobs():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0], [0, 5], [-5, -5]])
    x = torch.cat([c + 0.1 * torch.randn(30, 2, generator=g) for c in centres])
    c = kmeans(x, 3, iters=10)
    assert torch.cdist(centres, c).min(1).values.max() < 0.2


def test_kmeans_init_uses_the_codes_random_init_does_not():
    n, C = 600, 16
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(C, 8, generator=g)
    vecs = centres[torch.arange(n) % C] + 0.05 * torch.randn(n, 8, generator=g)
    usage = {}
    for init in (True, False):
        m = _model(n=n, codebook_sizes=[16, 8, 4], kmeans_init=init)
        with torch.no_grad():
            m.item_emb.weight[1:] = vecs
        m.begin_epoch(1)  # entering idmm builds the dictionary
        usage[init] = m.code_usage()
    assert min(usage[True]) >= 0.9, usage  # the paper: 93% with k-means
    assert sum(usage[True]) > sum(usage[False]), usage


# ---- stages -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mirm_codes", ["target", "predicted"])
def test_stage_schedule_switches_losses_and_builds_the_dictionary_once(mirm_codes):
    m = _model(mirm_codes=mirm_codes).train()
    seq, mask = pad_histories([np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8])], 12)
    tgt = torch.tensor([10, 11])
    assert [m.stage_at(e) for e in range(4)] == ["mirm", "idmm", "joint", "joint"]
    assert m.begin_epoch(0) == "mirm" and not m.use_codes and not bool(m.dict_ready)
    m(seq, mask, tgt)
    t = m.training_terms()
    assert t["retrieval_weight"] == 1 and t["extra_negatives"] is None
    assert float(t["losses"]["idmm"]) == 0 and float(t["losses"]["mipdm"]) == 0
    assert m.begin_epoch(1) == "idmm" and bool(m.dict_ready)
    book = m.codebooks[0].detach().clone()
    m(seq, mask, tgt)
    t = m.training_terms()
    assert t["retrieval_weight"] == 0 and float(t["losses"]["idmm"]) > 0 and float(t["losses"]["mipdm"]) > 0
    assert m.begin_epoch(2) == "joint"
    torch.testing.assert_close(m.codebooks[0].detach(), book)  # k-means ran once, not again on entering joint
    user, interests = m(seq, mask, tgt)
    t = m.training_terms()
    o = GemiRecOptions.model_validate(SMALL)
    m_star = m.flat(m.quantise(m.enc(m.to_score_space(m.item_emb(tgt))))[0])
    logits = m.code_logits(seq, mask)
    if mirm_codes == "target":  # one interest, fused from the target's own code
        taken = m_star[:, None]
        assert interests.shape == (2, 1, 8) and torch.equal(m.codes, taken)
    else:  # the K codes the example would be served with (ε rule), the positive scored by its best interest
        taken = torch.cat([select_codes(logits, m.sizes, m.K, o.epsilon), m_star[:, None]], 1)
        assert interests.shape == (2, m.K, 8) and torch.equal(m.codes, taken[:, :-1])
    n_hard = o.hard_interests + taken.shape[1]
    assert t["retrieval_weight"] == 1 and t["extra_negatives"].shape == (2, n_hard + o.easy_interests)
    # the positive's own code (m*) and the served codes are never negative interests
    hard = logits.topk(n_hard, -1).indices
    assert torch.all(torch.isinf(t["extra_negatives"][:, :n_hard]) == (hard[:, :, None] == taken[:, None]).any(-1))
    assert int(m.stage_id) == 2  # the stage travels with the weights (serving uses codes)


def test_auto_codebook_sizes_scale_the_papers_shape_to_the_catalogue():
    assert auto_codebook_sizes(524_288) == [32, 16, 8, 4]  # the paper's dictionary = the rule at 32 items per code
    assert auto_codebook_sizes(3871) == [8, 4, 2, 2]  # the synthetic catalogue: 128 codes, ~30 items each
    for n in (10, 400, 3871, 9000, 100_000, 2_000_000):
        for C in (1, 2, 4):
            sz = auto_codebook_sizes(n, C)
            assert len(sz) == C and sz == sorted(sz, reverse=True) and min(sz) >= 2
            target = max(n / 32, 2 ** C)
            assert 0.5 <= np.prod(sz) / target <= 2 or min(sz) == 2 and np.prod(sz) <= 2 * target, (n, C, sz)
    m = _model(n=3871, codebook_sizes="auto")
    assert m.sizes == [8, 4, 2, 2] and m.n_codes == 128 and m.gpt_head.out_features == 128
    assert m.cfg.options["codebook_sizes"] == [8, 4, 2, 2]  # what the checkpoint's model_config.json records
    assert _model(n=3871, codebook_sizes=[32, 16, 8, 4]).n_codes == 16_384  # the paper's sizes stay available
    assert GemiRecOptions().codebook_sizes == "auto" and GemiRecOptions().mirm_codes == "predicted"


def test_fused_interests_start_as_the_user_tower():
    """fusion_zero_init: u_m = u + MLP(concat(e_m, u)) with the MLP's last layer 0, so that entering the joint
    stage no interest is worse than the tower alone; the MLP still learns (its last layer has a gradient)."""
    m = _model(mirm_codes="predicted").train()
    m.begin_epoch(2)
    seq, mask = pad_histories([np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8])], 12)
    user, interests = m(seq, mask, torch.tensor([10, 11]))
    u = m.to_score_space(m.user_vector(seq, mask))
    torch.testing.assert_close(interests, u[:, None].expand_as(interests))
    torch.testing.assert_close(user, u)
    (user.sum() + interests.sum()).backward()
    assert m.fusion[-1].weight.grad.abs().sum() > 0
    assert torch.all(_model(fusion_zero_init=False).fusion[-1].weight != 0)
    # after a mirm stage (e = 0) that trained the MLP, the codes still enter with no effect: every interest of the
    # joint stage's first step = the tower trained so far, u + MLP(concat(0, u)); the weights on e then learn
    m = _model(mirm_codes="predicted").train()
    m.begin_epoch(0)
    q = 3 * 4  # C · d_q of SMALL
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    for _ in range(3):
        user, _ = m(seq, mask, torch.tensor([10, 11]))
        opt.zero_grad(), (-user.sum()).backward(), opt.step()
    assert torch.all(m.fusion[0].weight[:, :q] == 0) and m.fusion[-1].weight.abs().sum() > 0
    tower, _ = m(seq, mask, torch.tensor([10, 11]))  # stage mirm: u + MLP(concat(0, u))
    m.begin_epoch(2)
    user, interests = m(seq, mask, torch.tensor([10, 11]))
    torch.testing.assert_close(interests, tower[:, None].expand_as(interests))
    user.sum().backward()
    assert m.fusion[0].weight.grad[:, :q].abs().sum() > 0


def test_prototype_fusion_adds_the_decoded_code_vector_only_where_codes_are_used():
    """prototype_weight γ₀: u_m = u + MLP(concat(e_m, u)) + γ‖u‖·sg[dec(e_m)] in the stages with codes; the stage
    without codes (e = 0) has no prototype; γ learns, the decoder gets no gradient from it; off = no parameter."""
    assert not hasattr(_model(), "prototype_gamma")
    m = _model(mirm_codes="predicted", prototype_weight=0.5).train()
    seq, mask = pad_histories([np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8])], 12)
    m.begin_epoch(0)  # mirm: no codes, no prototype (fusion zero-init: u_m = u)
    _, interests = m(seq, mask, torch.tensor([10, 11]))
    u = m.user_vector(seq, mask)
    torch.testing.assert_close(interests, m.to_score_space(u)[:, None].expand_as(interests))
    m.begin_epoch(2)  # joint: the decoded code vector, scaled by γ‖u‖, is added to every interest
    user, interests = m(seq, mask, torch.tensor([10, 11]))
    e = m.interest_emb(m.codes)  # [B, K, C·q]
    want = u[:, None] + 0.5 * u.norm(dim=-1)[:, None, None] * m.dec(e)
    torch.testing.assert_close(interests, m.to_score_space(want))
    assert interests.shape == (2, 3, 8) and len({tuple(r.tolist()) for r in m.codes[0:1].T}) == 3
    assert (interests[:, 0] - interests[:, 1]).abs().sum() > 0  # different codes, different interests
    user.sum().backward()
    assert m.prototype_gamma.grad is not None and m.prototype_gamma.grad != 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.dec.parameters())  # MIRM: sg[dec]
    m.eval()
    m.cache.size = 0
    torch.testing.assert_close(m.serving_interests(seq, mask), m.to_score_space(want.detach()))  # served = trained


def test_attention_fusion_pools_the_history_per_code_and_starts_as_the_tower():
    """fusion "attention": u_m = Σ_l softmax_l(s_l + q_mᵀk_l/√r) h_l (+ the tower's MLP), q_m = W_q e_m; W_q = 0 at the
    start (every u_m = u), then each code pools the history its own way; padding changes nothing."""
    m = _model(mirm_codes="predicted", fusion="attention", attention_rank=4).train()
    seq, mask = pad_histories([np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8])], 12)
    m.begin_epoch(2)
    user, interests = m(seq, mask, torch.tensor([10, 11]))
    u = m.to_score_space(m.user_vector(seq, mask))
    torch.testing.assert_close(interests, u[:, None].expand_as(interests))  # W_q = 0: the tower
    user.sum().backward()
    assert m.attn_query.weight.grad.abs().sum() > 0  # and W_q learns
    with torch.no_grad():
        m.attn_query.weight.normal_()
    m.eval()
    m.cache.size = 0
    got = m.serving_interests(seq, mask)  # [B, K, d]
    # by hand: the tower's logits + the code's query against the keys, softmax over the real items
    H = m.item_emb(seq)
    s_l = m.W2(torch.tanh(m.W1(H + m.pos_emb(pos_ids(mask))))).squeeze(-1)
    e = m.interest_emb(m.codes)
    sc = s_l[:, None] + torch.einsum("bmr,blr->bml", m.attn_query(e), m.attn_key(H)) / 2.0  # √r = 2
    a = torch.softmax(sc.masked_fill(~mask[:, None], float("-inf")), -1)
    u_m = torch.einsum("bml,bld->bmd", a, H)
    u_m = u_m + m.user_mlp(u_m)
    torch.testing.assert_close(got, m.to_score_space(m.fuse(e, u_m)))
    torch.testing.assert_close(m.aux, a)  # the routing the metrics read: one attention per interest
    assert (a[:, 0] - a[:, 1]).abs().sum() > 1e-3  # codes pool differently
    m.cache.clear()
    alone = m.serving_interests(seq[:1, :3], mask[:1, :3])  # the short history without its padding
    torch.testing.assert_close(alone, got[:1])


def test_predicted_codes_training_path_scores_with_the_best_interest():
    from mirec.train import LossModule, TrainConfig

    m = _model(mirm_codes="predicted", mipdm_batch=3).train()
    m.begin_epoch(2)
    with torch.no_grad():  # interests that differ per code
        m.fusion[-1].weight.normal_()
    hist = [np.arange(1, 4 + i) for i in range(6)]
    seq, mask = pad_histories(hist, 12)
    tgt = torch.arange(10, 16)
    user, interests = m(seq, mask, tgt)
    assert m.selection == "max" and interests.shape == (6, 3, 8) and m.codes.shape == (6, 3)
    # the codes of all 6 examples (3 through the GPT with gradient, 3 without) = the served ε-rule codes
    torch.testing.assert_close(m.codes, select_codes(m.code_logits(seq, mask), m.sizes, m.K, m.opt.epsilon))
    m.eval()
    m.cache.size = 0
    torch.testing.assert_close(m.serving_interests(seq, mask), interests)  # trained on what is served
    m.train()
    m(seq, mask, tgt)
    v_t = m.to_score_space(m.item_emb(tgt))
    best = torch.einsum("bkd,bd->bk", interests, v_t).argmax(1)
    torch.testing.assert_close(user, interests[torch.arange(6), best])  # the positive: its best interest
    lm = LossModule(m, TrainConfig(num_negatives=8), np.ones(40))
    loss, ce, rr = lm(seq, mask, tgt, torch.randint(1, 41, (8,)))
    loss.backward()
    assert torch.isfinite(loss) and m.codebooks[0].grad is not None and m.fusion[0].weight.grad is not None
    assert m.gpt_head.weight.grad is not None
    assert _model(mirm_codes="target").selection == "hard"


def test_training_forward_is_padding_invariant():
    m = _model(mirm_codes="predicted").train()
    m.begin_epoch(2)
    with torch.no_grad():
        m.fusion[-1].weight.normal_()
    seq, mask = pad_histories([np.array([1, 5, 7, 9]), np.array([3, 3, 20, 30, 31, 2, 8])], 12)
    tgt = torch.tensor([10, 11])
    user, interests = m(seq, mask, tgt)
    codes = m.codes.clone()
    seq2 = torch.cat([seq, torch.randint(1, 41, (2, 5))], 1)
    mask2 = torch.cat([mask, torch.zeros(2, 5, dtype=torch.bool)], 1)
    seq2[0, 4:7] = torch.tensor([11, 12, 13])  # junk behind the mask
    user2, interests2 = m(seq2, mask2, tgt)
    assert torch.equal(m.codes, codes)
    torch.testing.assert_close(interests2, interests, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(user2, user, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from mirec.config import DataConfig, SynthConfig
    from mirec.data import prepare

    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare(DataConfig(out_dir=str(out), synth=SynthConfig(n_users=60, n_items=80, n_categories=4, seq_len=(8, 14))),
            progress=False)
    return out


def test_training_loop_runs_the_stages_and_restarts_early_stopping(tiny, tmp_path):
    from mirec.train import TrainConfig, load_model, train

    opts = {**SMALL, "stages": [{"name": "mirm", "epochs": 2}, {"name": "idmm", "epochs": 1}, {"name": "joint"}]}
    res = train(tiny, ModelConfig(name="gemirec", dim=8, K=2, max_len=10, options=opts),
                TrainConfig(epochs=4, batch_size=32, num_negatives=8, samples_per_epoch=96, num_threads=1,
                            patience=3), tmp_path / "ck", progress=False)
    log = [json.loads(x) for x in (tmp_path / "ck" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == ["mirm", "mirm", "idmm", "joint"]
    assert res.metrics["best_epoch"] == 4  # the kept checkpoint comes from the last stage
    model, cfg = load_model(res.checkpoint)
    assert model.stage == "joint" and cfg.options["codebook_sizes"] == [4, 3, 2]
    assert log[-1]["rr_loss"] > 0  # the IDMM / MIPDM terms are in the total


def test_bf16_autocast_forward_and_backward():
    from mirec.train import LossModule, TrainConfig

    m = _model().train()
    m.begin_epoch(2)
    lm = LossModule(m, TrainConfig(num_negatives=8), np.ones(40))
    seq, mask = pad_histories([np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8])], 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, ce, rr = lm(seq, mask, torch.tensor([10, 11]), torch.randint(1, 41, (8,)))
    loss.backward()
    assert torch.isfinite(loss) and m.gpt_head.weight.grad is not None and m.codebooks[0].grad is not None


# ---- serving: ε rule, cache, padding ------------------------------------------------------------------
def _greedy(logits, sizes, K, eps):
    rest = int(np.prod(sizes[1:]))
    out, used = [], {}
    for c in np.argsort(-logits, kind="stable"):
        g = c // rest
        if used.get(g, 0) < eps:
            out.append(int(c))
            used[g] = used.get(g, 0) + 1
        if len(out) == K:
            break
    return out


def test_epsilon_rule_equals_greedy_with_a_cap_per_first_level_code():
    sizes = [3, 4, 2]
    logits = torch.randn(20, 24, generator=torch.Generator().manual_seed(0))
    logits[0, :8] = 10 + torch.arange(8.0)  # user 0: the 8 best codes all share first-level code 0
    got = select_codes(logits, sizes, K=5, eps=2)
    for b in range(20):
        assert sorted(got[b].tolist()) == sorted(_greedy(logits[b].numpy(), sizes, 5, 2))
        assert np.bincount(got[b].numpy() // 8).max() <= 2
    assert {6, 7} <= set(got[0].tolist()) and not set(got[0].tolist()) & set(range(6))  # group 0's best two only


def test_code_cache_hits_and_is_cleared_by_training():
    m = _model()
    m.begin_epoch(2)
    m.eval()
    hist = [np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8])]
    v1 = m.serving_interests(*pad_histories(hist, 12))
    codes = m.codes.clone()
    assert len(m.cache) == 2
    v2 = m.serving_interests(*pad_histories(hist[::-1], 12))  # served from the cache, order-independent
    torch.testing.assert_close(v2, v1.flip(0))
    assert len(m.cache) == 2 and torch.equal(m.codes, codes.flip(0))
    assert np.bincount(codes[0].numpy() // (3 * 2)).max() <= 3  # ε = 3 (default) per first-level code
    m.train()
    assert len(m.cache) == 0


def test_padding_invariance_and_batch_independence():
    m = _model()
    m.begin_epoch(2)
    m.eval()
    m.cache.size = 0  # the cache must not hide a difference
    hist = [np.array([1, 5, 7, 9]), np.array([3, 3, 20, 30, 31, 2, 8])]
    seq, mask = pad_histories(hist, 12)
    v = m.serving_interests(seq, mask)
    assert v.shape == (2, 3, 8) and m.aux.shape == (2, 3, 7) and torch.all(m.aux[0, :, 4:] == 0)
    seq2 = torch.cat([seq, torch.randint(1, 41, (2, 5))], 1)
    mask2 = torch.cat([mask, torch.zeros(2, 5, dtype=torch.bool)], 1)
    seq2[0, 4:7] = torch.tensor([11, 12, 13])
    torch.testing.assert_close(m.serving_interests(seq2, mask2), v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.serving_interests(*pad_histories(hist[:1], 12)), v[:1], rtol=1e-5, atol=1e-6)
    long = np.arange(30) % 40
    torch.testing.assert_close(m.serving_interests(*pad_histories([long], 12)),
                               m.serving_interests(*pad_histories([long[-12:]], 12)))


# ---- measures -----------------------------------------------------------------------------------------
def test_amr_cur_nmi_by_hand():
    assert M.interest_separation(np.array([[1, 2, 3, 4], [1, 2, 3, 4]])) == 0.0  # collapse
    assert M.interest_separation(np.array([[1, 2, 3, 4], [5, 6, 7, 8]])) == 1.0
    # pairs: (a,b) overlap 2/4, (a,c) 0, (b,c) 1/4 -> 1 − 0.75/3
    assert M.interest_separation(np.array([[1, 2, 3, 4], [3, 4, 5, 6], [6, 7, 8, 9]])) == pytest.approx(0.75)
    assert np.isnan(M.interest_separation(np.array([[1, 2]])))
    cat = np.array([0, 0, 1, 1, 2, 2])
    # history in category 0; targets 1 (cat 0), 2 and 4 (new categories 1, 2); the list hits 2 only
    assert M.latent_interest_recall(np.array([2, 0, 3]), np.array([1, 2, 4]), np.array([0]), cat, 3) == 0.5
    assert M.latent_interest_recall(np.array([1]), np.array([1]), np.array([0]), cat, 1) is None
    assert M.nmi([0, 0, 1, 1], [5, 5, 7, 7]) == pytest.approx(1.0)
    assert M.nmi([0, 1, 0, 1], [0, 0, 1, 1]) == pytest.approx(0.0)
    assert M.nmi([0, 0, 0], [0, 1, 2]) == 0.0


def test_evaluation_metrics_code_usage_and_nmi():
    m = _model(n=60)
    m.begin_epoch(2)
    out = m.evaluation_metrics(np.arange(60) % 4)
    assert set(out) == {"code_usage_l1", "code_usage_l2", "code_usage_l3", "code_usage_joint",
                        "code_nmi_l1", "code_nmi_l2", "code_nmi_l3"}
    assert all(0 <= v <= 1 for v in out.values())


# ---- served through the packaged files = offline ------------------------------------------------------
def test_packaged_service_equals_offline(tmp_path):
    from mirec.data.schema import IdMap  # noqa: F401  (the service's id map)
    from mirec.retrieval.recommender import Recommender
    from mirec.serving.packaging import PackageSpec, package
    from mirec.serving.service import RecommendService
    from mirec.serving.testing import assert_same_answer, items_frame, random_histories, tiny_model

    model, cfg = tiny_model("gemirec")
    model.begin_epoch(10)  # joint: the dictionary is built and the served interests come from predicted codes
    with torch.no_grad():  # the fusion starts at 0 (every interest = u); trained weights make them differ
        model.fusion[-1].weight.normal_(std=0.3)
    model.eval()
    items = items_frame()
    # `mirec package`'s path; the name is also torch-model-archiver's scratch dir $TMPDIR/<name> (it deletes it)
    name = "gemirec_test_served_mar"
    spec = PackageSpec.model_validate({"out_dir": str(tmp_path / "pkg"), "candidates": [{"name": name}]})
    res = package(spec, candidates={name: (model, cfg, items, {})}, log=lambda *_: None)
    with zipfile.ZipFile(res["candidates"][0]["mar"]) as z:  # what the MAR carries: dictionary, GPT, stage, code
        assert "mirec/models/gemirec.py" in z.namelist()
        z.extractall(tmp_path / "mar")
    state = torch.load(tmp_path / "mar" / "weights.pt", weights_only=True)
    assert {"codebooks.0", "gpt_head.weight", "stage_id", "dict_ready"} <= set(state)
    service = RecommendService.load(tmp_path / "mar", device="cpu")
    assert service.recommender.model.stage == "joint" and bool(service.recommender.model.dict_ready)
    meta = service.meta  # the aggregator (package default `auto`) and its params travel in the MAR
    offline = Recommender(model, items=items, item_popularity=items["popularity"].to_numpy(),
                          aggregator=meta["aggregator"], aggregator_params=meta["aggregator_params"])
    hists = random_histories(12)
    ids = service.item_ids
    off = offline.recommend([ids.to_index(h) for h in hists], n=20, exclude_seen=True)
    results = service.handle_batch([{"user_id": f"u{i}", "history": h, "n": 20} for i, h in enumerate(hists)])
    for (status, body), o in zip(results, off):
        assert status == 200 and body["fallback"] is None
        assert_same_answer(body["items"], [(f"item-{r.item_idx}", r.score, r.interest) for r in o])
        assert body["interest_stats"]["k"] == 4

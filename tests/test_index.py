"""ItemIndex kinds added for 10^6-item serving (hnsw_sq8, ivfpq_fs), the batched K-interest search, and
`mirec package --index auto` (mirec.serving.packaging.choose_index). Small sizes: seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mirec.retrieval import ItemIndex
from mirec.retrieval.index import EFFORT_LADDER, EFFORT_PARAM, INDEX_KINDS, default_pq_m, exact_top_k, recall_at_k

NEW_KINDS = ["hnsw_sq8", "ivfpq_fs"]


def test_kinds_and_effort_tables_agree():
    assert set(NEW_KINDS) <= set(INDEX_KINDS)
    assert set(EFFORT_PARAM) == set(EFFORT_LADDER) == set(INDEX_KINDS) - {"flat"}
    assert default_pq_m(64) == 32 and default_pq_m(16) == 8 and default_pq_m(6) == 3


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_new_kind_builds_and_searches_close_to_exact(clustered, kind):
    x, q = clustered
    _, exact = ItemIndex.build(x, "flat", use_gpu=False).search(q, 50)
    idx = ItemIndex.build(x, kind, use_gpu=False, nprobe=32, ef_search=128)
    s, i = idx.search(q, 50)
    assert s.shape == i.shape == (8, 3, 50) and idx.n_items == 4000 and idx.dim == 16
    assert np.all(np.diff(s, axis=-1) <= 1e-4)  # best first
    assert recall_at_k(i, exact) >= 0.9
    if kind == "ivfpq_fs":
        # 4-bit PQ fast-scan codes, re-ranked exactly: the scores are the exact inner products
        assert idx.params["pq_m"] == 8 and idx.params["k_factor"] == 4
        assert np.allclose(s, np.einsum("bkd,bkmd->bkm", q, x[i]), atol=1e-4)
    else:
        assert idx.params["hnsw_m"] == 32 and "ef_search" in idx.params


def test_search_sends_all_interests_as_one_batched_faiss_call(clustered):
    """B users x K interests -> one FAISS search of B*K queries (not one call per interest)."""
    x, q = clustered
    idx = ItemIndex.build(x, "ivfpq_fs", use_gpu=False)
    calls = []

    class Spy:
        def __init__(self, inner):
            self.inner, self.ntotal, self.d = inner, inner.ntotal, inner.d

        def search(self, queries, k):
            calls.append(queries.shape)
            return self.inner.search(queries, k)

    want = idx.search(q, 10)
    idx.index = Spy(idx.index)
    got = idx.search(q, 10)
    assert calls == [(8 * 3, 16)]
    assert np.array_equal(got[1], want[1])
    idx.search(q[0], 10)  # one user's [K, d]
    assert calls[-1] == (3, 16)


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_new_kind_tune_reaches_target_and_set_effort_works(clustered, kind):
    x, _ = clustered
    rng = np.random.default_rng(3)
    queries = x[rng.integers(0, len(x), 300)] + 0.5 * rng.normal(size=(300, 16)).astype(np.float32)
    idx = ItemIndex.build(x, kind, use_gpu=False)
    got = idx.tune(x, queries, k=50, target=0.97)
    assert got["met"] and got["recall"] >= 0.97
    efforts = [e for e, _ in got["curve"]]
    assert efforts == sorted(efforts) and idx.params[EFFORT_PARAM[kind]] == efforts[-1]
    assert all(r < 0.97 for _, r in got["curve"][:-1])
    exact = exact_top_k(x, queries, 50)
    _, found = idx.index.search(queries, 50)
    assert recall_at_k(found, exact) >= 0.97 - 1e-9  # the tuned effort is in force
    idx.set_effort(1)
    assert idx.params[EFFORT_PARAM[kind]] == 1
    _, worse = idx.index.search(queries, 50)
    assert recall_at_k(worse, exact) < got["recall"]
    # a recall function replaces the per-query recall (packaging's answer recall)
    seen = []
    got = idx.tune(x, queries, k=50, target=0.5, recall_fn=lambda ix: seen.append(ix.params[EFFORT_PARAM[kind]]) or 0.6)
    assert got["met"] and seen == [EFFORT_LADDER[kind][0]]


def test_ivfpq_fs_k_factor_tradesrecall_at_k(clustered):
    x, _ = clustered
    rng = np.random.default_rng(5)
    queries = x[rng.integers(0, len(x), 200)] + 0.5 * rng.normal(size=(200, 16)).astype(np.float32)
    exact = exact_top_k(x, queries, 50)
    idx = ItemIndex.build(x, "ivfpq_fs", use_gpu=False, nprobe=64, k_factor=1, pq_m=4)
    _, low = idx.index.search(queries, 50)
    idx.set_k_factor(8)
    _, high = idx.index.search(queries, 50)
    assert recall_at_k(high, exact) > recall_at_k(low, exact) and idx.params["k_factor"] == 8
    with pytest.raises(ValueError):
        ItemIndex.build(x, "hnsw_sq8", use_gpu=False, hnsw_m=8).set_k_factor(2)
    with pytest.raises(ValueError):
        ItemIndex.build(x, "ivfpq_fs", use_gpu=False, pq_m=5)  # must divide d


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_new_kind_save_load_round_trip(tmp_path, clustered, kind):
    x, q = clustered
    idx = ItemIndex.build(x, kind, use_gpu=False)
    idx.set_effort(8)
    if kind == "ivfpq_fs":
        idx.set_k_factor(6)
    s1, i1 = idx.search(q, 20)
    idx.save(tmp_path / "i.faiss", info={"selection": {"mode": "auto"}})
    assert json.loads((tmp_path / "i.json").read_text())["info"] == {"selection": {"mode": "auto"}}
    back = ItemIndex.load(tmp_path / "i.faiss")
    assert back.kind == kind and back.params == idx.params and back.n_items == 4000
    s2, i2 = back.search(q, 20)
    assert np.array_equal(i1, i2) and np.allclose(s1, s2)
    # index.json is the operating point: an edited effort is applied on load
    spec = json.loads((tmp_path / "i.json").read_text())
    spec["params"][EFFORT_PARAM[kind]] = 64
    (tmp_path / "i.json").write_text(json.dumps(spec))
    again = ItemIndex.load(tmp_path / "i.faiss")
    assert again.params[EFFORT_PARAM[kind]] == 64
    _, i3 = again.search(q, 20)
    assert recall_at_k(i3, ItemIndex.build(x, "flat", use_gpu=False).search(q, 20)[1]) >= recall_at_k(
        i2, ItemIndex.build(x, "flat", use_gpu=False).search(q, 20)[1])


# ------------------------------------------------------------------------------------ package time
def _clustered_model(n_items: int = 3000, seed: int = 0):
    """A tiny ComiRec-SA whose item embeddings are clustered (as trained ones are), not i.i.d."""
    import torch

    from mirec.serving.testing import items_frame, tiny_model

    model, cfg = tiny_model("comirec_sa", n=n_items)
    rng = np.random.default_rng(seed)
    d = model.item_emb.weight.shape[1]
    centres = rng.normal(size=(30, d))
    emb = centres[rng.integers(0, 30, n_items + 1)] + 0.35 * rng.normal(size=(n_items + 1, d))
    with torch.no_grad():
        model.item_emb.weight.copy_(torch.as_tensor(emb, dtype=model.item_emb.weight.dtype))
    return model, cfg, items_frame(n_items)


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_package_tunes_new_kinds_on_answerrecall_at_k(tmp_path, kind):
    from mirec.serving.packaging import IndexSpec, stage_candidate

    model, cfg, items = _clustered_model()
    meta = stage_candidate(tmp_path, model, cfg, items, name="m", copy_code=False,
                           index=IndexSpec(kind=kind, target_recall=0.95, recall_metric="answer", recall_queries=64,
                                           hnsw_m=16, ef_construction=64))
    rec = meta["index"]["recall"]
    assert meta["index"]["kind"] == kind and rec["met"] and rec["recall"] >= 0.95 and rec["metric"] == "answer"
    assert rec["recall_k"] == 50 and meta["index"][EFFORT_PARAM[kind]] == rec["curve"][-1][0]
    saved = json.loads((tmp_path / "index.json").read_text())
    assert saved["kind"] == kind and saved["info"]["recall"]["recall"] == rec["recall"]
    assert ItemIndex.load(tmp_path / "index.faiss").params[EFFORT_PARAM[kind]] == meta["index"][EFFORT_PARAM[kind]]


def test_package_auto_picks_the_cheapest_kind_that_meets_the_target(tmp_path):
    from mirec.serving.packaging import IndexSpec, stage_candidate

    model, cfg, items = _clustered_model()
    spec = IndexSpec(kind="auto", target_recall=0.95, recall_queries=64, hnsw_m=16, ef_construction=64,
                     auto_kinds=["ivfpq_fs", "hnsw_sq8", "flat"])
    meta = stage_candidate(tmp_path, model, cfg, items, name="m", copy_code=False, index=spec)
    sel = meta["index"]["selection"]
    assert sel["mode"] == "auto" and sel["metric"] == "answer" and sel["target_recall"] == 0.95
    assert [t["kind"] for t in sel["tried"]] == ["ivfpq_fs", "hnsw_sq8", "flat"]
    met = [t for t in sel["tried"] if t["met"]]
    assert met and all(t["recall"] >= 0.95 for t in met)
    cheapest = min(met, key=lambda t: t["p50_ms"])
    assert sel["chosen"] == meta["index"]["kind"] == cheapest["kind"] and sel["recall"] == cheapest["recall"]
    assert meta["index"]["recall"]["recall"] >= 0.95 and sel["histories"] == "sampled by popularity"
    # index.json records the choice next to the index; the served index is the chosen one
    saved = json.loads((tmp_path / "index.json").read_text())
    assert saved["kind"] == sel["chosen"] and saved["info"]["selection"]["chosen"] == sel["chosen"]
    assert json.loads((tmp_path / "meta.json").read_text())["index"]["selection"]["tried"] == sel["tried"]
    assert ItemIndex.load(tmp_path / "index.faiss").kind == sel["chosen"]


def test_package_auto_stops_early_and_falls_back_when_nothing_meets(tmp_path, caplog):
    from mirec.serving.packaging import IndexSpec, stage_candidate

    model, cfg, items = _clustered_model()
    fast = stage_candidate(tmp_path / "a", model, cfg, items, name="m", copy_code=False,
                           index=IndexSpec(kind="auto", target_recall=0.9, recall_queries=32, auto_stop_ms=1e6,
                                           auto_kinds=["ivfpq_fs", "flat"]))
    assert [t["kind"] for t in fast["index"]["selection"]["tried"]] == ["ivfpq_fs"]  # first that met, fast enough
    with caplog.at_level("WARNING"):
        none = stage_candidate(tmp_path / "b", model, cfg, items, name="m", copy_code=False,
                               index=IndexSpec(kind="auto", target_recall=1.0, recall_queries=32, hnsw_m=4,
                                               ef_construction=4, auto_kinds=["hnsw_sq8"]))
    sel = none["index"]["selection"]
    if not sel["met"]:
        assert "no kind of ['hnsw_sq8'] reaches answer recall 1" in caplog.text
        assert sel["chosen"] == "hnsw_sq8"


def test_package_auto_measures_on_heldout_histories(tmp_path):
    """recall_histories: the test/valid users of a prepared dataset (held out from training)."""
    from mirec.config import DataConfig, SynthConfig
    from mirec.data import prepare
    from mirec.models import ModelConfig, build
    from mirec.serving.packaging import IndexSpec, heldout_histories, stage_candidate

    out, _ = prepare(DataConfig(out_dir=str(tmp_path / "ds"), min_item_count=1,
                                synth=SynthConfig(n_users=300, n_items=400, n_categories=8, seed=1)), progress=False)
    import pandas as pd

    items = pd.read_parquet(out / "items.parquet")
    cfg = ModelConfig(name="comirec_sa", n_items=len(items), dim=16, K=2, max_len=20)
    model = build(cfg).eval()
    hist = heldout_histories(out, len(items), cfg.max_len, 50)
    assert 0 < len(hist) <= 50 and all(len(h) <= 20 for h in hist)
    meta = stage_candidate(tmp_path / "s", model, cfg, items, name="m", copy_code=False,
                           index=IndexSpec(kind="auto", target_recall=0.9, recall_queries=50, recall_histories=str(out),
                                           auto_kinds=["ivfpq_fs", "flat"], nlist=8))
    sel = meta["index"]["selection"]
    assert sel["histories"].startswith("held-out") and meta["index"]["recall"]["recall"] >= 0.9


def test_ivfpq_fs_tune_raises_k_factor_when_nprobe_plateaus():
    """Tight clusters: items of a cluster differ by less than 4-bit PQ's error, so no nprobe reaches the target at
    k_factor 1; tune doubles k_factor (exact re-ranking of more candidates) until it does."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(10, 16))
    x = (centres[rng.integers(0, 10, 3000)] + 0.02 * rng.normal(size=(3000, 16))).astype(np.float32)
    queries = (centres[rng.integers(0, 10, 100)] + 0.05 * rng.normal(size=(100, 16))).astype(np.float32)
    idx = ItemIndex.build(x, "ivfpq_fs", use_gpu=False, k_factor=1, pq_m=4, nlist=16)
    got = idx.tune(x, queries, k=20, target=0.95)
    assert got["met"] and got["recall"] >= 0.95
    kfs = [kf for kf, _, _ in got["k_factor_curve"]]
    assert kfs[0] == 1 and len(kfs) > 1 and idx.params["k_factor"] == kfs[-1]
    _, found = idx.index.search(queries, 20)
    assert recall_at_k(found, exact_top_k(x, queries, 20)) >= 0.95

"""Synthetic generator: determinism by seed, planted multi-interest structure, ground truth on disk."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mirec.config import DataConfig, SynthConfig
from mirec.data import Dataset, generate, prepare

CFG = SynthConfig(n_users=400, n_items=2000, n_categories=10, seq_len=(20, 60), noise=0.05, drift=0.3, seed=11)


@pytest.fixture(scope="module")
def gen():
    return generate(CFG, progress=False)


def test_deterministic_by_seed(gen):
    raw, items, truth, vec = gen
    raw2, items2, truth2, vec2 = generate(CFG, progress=False)
    pd.testing.assert_frame_equal(raw, raw2)
    pd.testing.assert_frame_equal(truth, truth2)
    pd.testing.assert_frame_equal(items, items2)
    np.testing.assert_array_equal(vec, vec2)
    raw3 = generate(CFG.model_copy(update={"seed": 12}), progress=False)[0]
    assert not raw3["item_id"].equals(raw["item_id"])


def test_shapes_and_ranges(gen):
    raw, items, truth, vec = gen
    assert list(raw.columns) == ["user_id", "item_id", "timestamp", "weight"]
    lens = raw.groupby("user_id").size()
    assert len(lens) == CFG.n_users and lens.min() >= 20 and lens.max() <= 60
    assert len(items) == CFG.n_items == len(vec) and vec.shape[1] == CFG.dim
    assert items["category"].nunique() == CFG.n_categories  # every category non-empty
    assert set(raw["item_id"]) <= set(items["item_id"])
    k = truth[truth["phase"] == 0].groupby("user_id").size()
    assert k.min() >= 1 and k.max() <= 4 and (k == truth.groupby("user_id")["n_interests"].first()).all()
    w = truth[truth["phase"] == 0].groupby("user_id")["weight"].sum()
    np.testing.assert_allclose(w, 1.0, atol=1e-9)
    # time-ordered, no same-second ties inside a user
    assert (raw.groupby("user_id")["timestamp"].diff().dropna() > 0).all()


def test_events_concentrate_on_true_interests(gen):
    raw, items, truth, _ = gen
    cat = dict(zip(items["item_id"], items["category"]))
    ev = raw.assign(category=raw["item_id"].map(cat))
    n = ev.groupby("user_id").cumcount()
    ev["phase"] = (n >= ev.groupby("user_id")["user_id"].transform("size") // 2).astype(int)
    true = set(zip(truth["user_id"], truth["phase"], truth["category"]))
    on_true = np.fromiter((k in true for k in zip(ev["user_id"], ev["phase"], ev["category"])), bool, len(ev))
    # All but the uniform noise (5%, some of which lands on a true category by chance).
    assert on_true.mean() > 0.93
    # Drift: drifted users' second half uses a category the first half did not have.
    drifted = truth.loc[truth["drifted"], "user_id"].unique()
    assert 0.2 < len(drifted) / CFG.n_users < 0.4
    for u in drifted[:20]:
        t = truth[truth["user_id"] == u]
        assert set(t.loc[t["phase"] == 1, "category"]) - set(t.loc[t["phase"] == 0, "category"])
    # Per-user mixture weights are planted in the event counts (heaviest interest ~ most events).
    top_true = truth[truth["phase"] == 0].sort_values("weight").groupby("user_id")["category"].last()
    first = ev[ev["phase"] == 0]
    top_seen = first.groupby("user_id")["category"].agg(lambda s: s.value_counts().index[0])
    assert (top_true == top_seen.reindex(top_true.index)).mean() > 0.8


def test_item_vectors_cluster_by_category(gen):
    _, items, _, vec = gen
    cat = items["category"].astype("category").cat.codes.to_numpy()
    centroids = np.stack([vec[cat == c].mean(0) for c in range(CFG.n_categories)])
    nearest = np.argmax(vec @ centroids.T / np.linalg.norm(centroids, axis=1), axis=1)
    assert (nearest == cat).mean() > 0.95
    within = np.linalg.norm(vec - centroids[cat], axis=1).mean()
    between = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)[np.triu_indices(CFG.n_categories, 1)].mean()
    assert within * 3 < between


def test_prepare_saves_ground_truth(tmp_path):
    small = CFG.model_copy(update={"n_users": 200, "n_items": 600})
    out, rep = prepare(DataConfig(synth=small, out_dir=str(tmp_path)), progress=False)
    ds = Dataset.load(out)
    truth = ds.truth()
    assert {"user_idx", "interest_id", "category_idx", "weight", "phase"} <= set(truth.columns)
    assert set(truth["user_idx"]) == set(range(ds.n_users))
    assert (truth["interest_id"] == truth["category_idx"]).all() and (truth["category_idx"] >= 0).all()
    vec = ds.truth_item_vectors()
    assert vec.shape == (ds.n_items, small.dim)
    # row item_idx of the saved vectors is the generator's vector of that external item id
    _, _, _, full = generate(small, progress=False)
    ids = ds.items["item_id"].str[1:].astype(int).to_numpy()
    np.testing.assert_array_equal(vec, full[ids])
    # category names round-trip: truth categories are the item table's categories
    assert set(truth["category"]) <= set(ds.items["category"])
    # a real dataset written into the same folder removes the stale ground truth
    rows = pd.DataFrame({"user_id": np.repeat(np.arange(6), 6), "item_id": np.tile(np.arange(6), 6),
                         "timestamp": np.arange(36) + 10**9})
    rows.to_csv(tmp_path / "r.csv", index=False)
    prepare(DataConfig(source={"format": "table", "path": str(tmp_path / "r.csv")}, out_dir=str(tmp_path)),
            progress=False)
    assert Dataset.load(tmp_path).truth() is None


def test_large_catalogue_is_fast():
    import time

    t = time.process_time()  # CPU time: robust to a busy shared machine
    raw, items, _, vec = generate(SynthConfig(n_users=2000, n_items=1_000_000, seed=1), progress=False)
    assert len(items) == 1_000_000 and raw["item_id"].nunique() > 10_000
    assert time.process_time() - t < 20  # ~1.5 s; the old per-user loop took minutes at 10^5 users

"""Split invariants (ComiRec 8:1:1 + 80/20, temporal), determinism by seed, sequence order, id-map round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mirec.config import DataConfig, SplitConfig, SynthConfig
from mirec.data import Dataset, IdMap, prepare
from mirec.data.split import assign_user_splits, split_sequence

SMALL = SynthConfig(n_users=300, n_items=400, n_categories=6, seq_len=(10, 40), seed=3)


def _prepared(path, **split) -> Dataset:
    cfg = DataConfig(synth=SMALL, split=SplitConfig(**split), out_dir=str(path))
    prepare(cfg, progress=False)
    return Dataset.load(path)


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Dataset:
    return _prepared(tmp_path_factory.mktemp("split") / "d")


def test_comirec_users_partition_8_1_1(ds):
    sp = ds.users["split"]
    assert set(sp) == {"train", "valid", "test"}
    counts = sp.value_counts()
    n = ds.n_users
    assert counts["train"] == round(0.8 * n) and counts["valid"] == round(0.1 * n)
    assert counts.sum() == n and ds.users["user_idx"].is_unique  # each user in exactly one split
    tr, va, te = (set(ds.users_in(s)) for s in ("train", "valid", "test"))
    assert not (tr & va) and not (tr & te) and not (va & te)


def test_train_sequences_only_train_users(ds):
    seqs = ds.train_sequences()
    assert set(seqs) == set(ds.users_in("train"))


def test_eval_examples_first_80_last_20(ds):
    for split in ("valid", "test"):
        ex = ds.eval_examples(split)
        assert {e.user_idx for e in ex} == set(ds.users_in(split))
        for e in ex:
            full = ds.sequences[e.user_idx]
            assert len(e.history) == int(len(full) * 0.8)
            np.testing.assert_array_equal(np.concatenate([e.history, e.targets]), full)
            ts = ds._timestamps[e.user_idx]
            assert ts[len(e.history) - 1] <= ts[len(e.history)]  # history precedes targets in time


def test_split_sequence_edges():
    h, t = split_sequence(np.arange(10), 0.8)
    assert len(h) == 8 and len(t) == 2
    h, t = split_sequence(np.arange(2), 0.8)
    assert len(h) == 1 and len(t) == 1
    h, t = split_sequence(np.arange(3), 0.1)
    assert len(h) == 1 and len(t) == 2


def test_split_deterministic_by_seed():
    a = assign_user_splits(1000, SplitConfig(seed=7))
    b = assign_user_splits(1000, SplitConfig(seed=7))
    c = assign_user_splits(1000, SplitConfig(seed=8))
    assert (a == b).all() and not (a == c).all()


def test_prepare_deterministic(ds, tmp_path):
    again = _prepared(tmp_path / "again")
    pd.testing.assert_frame_equal(ds.users, again.users)
    pd.testing.assert_frame_equal(ds.interactions, again.interactions)
    pd.testing.assert_frame_equal(ds.items, again.items)


def test_sequences_sorted_with_tie_break(ds):
    inter = ds.interactions
    key = inter[["user_idx", "timestamp", "item_idx"]].to_numpy()
    order = np.lexsort((key[:, 2], key[:, 1], key[:, 0]))
    assert (order == np.arange(len(order))).all()


def test_same_second_ties_are_ordered_by_item_id(tmp_path):
    # One user, 5 events in the same second listed in scrambled order; 5 more later.
    rows = [("u", str(i), 100) for i in (30, 4, 200, 1, 17)] + [("u", str(i), 200 + i) for i in range(5)]
    others = [(f"v{k}", str(i), 50 + k) for k in range(5) for i in (30, 4, 200, 1, 17, 0, 2, 3)]
    df = pd.DataFrame(rows + others, columns=["user_id", "item_id", "timestamp"])
    df.to_csv(tmp_path / "t.csv", index=False)
    cfg = DataConfig(source={"format": "table", "path": str(tmp_path / "t.csv")}, out_dir=str(tmp_path / "o"),
                     min_item_count=1)
    prepare(cfg, progress=False)
    d = Dataset.load(tmp_path / "o")
    u = d.user_ids.to_index(["u"])[0]
    seq_ids = d.item_ids.to_external(d.sequences[u])
    assert seq_ids[:5] == ["1", "4", "17", "30", "200"]  # numeric order, not '1' < '17' < '200' < '30' < '4'


def test_temporal_split(tmp_path):
    d = _prepared(tmp_path / "t", kind="temporal")
    cut = d.cutoff
    assert cut is not None
    inter = d.interactions
    ev = d.eval_examples("test") + d.eval_examples("valid")
    assert ev and not (set(d.users_in("valid")) & set(d.users_in("test")))
    for e in ev[:50]:
        ts = d._timestamps[e.user_idx]
        assert (ts[: len(e.history)] < cut).all() and (ts[len(e.history):] >= cut).all()
        assert len(e.history) and len(e.targets)
    for u, seq in d.train_sequences().items():
        assert (d._timestamps[u][: len(seq)] < cut).all()
    # popularity counts only training-period events
    pop = np.bincount(inter.loc[inter["timestamp"] < cut, "item_idx"], minlength=d.n_items)
    np.testing.assert_array_equal(pop, d.item_popularity)


def test_id_map_round_trip(ds):
    items = ds.item_ids
    idx = np.arange(ds.n_items)
    ext = items.to_external(idx)
    np.testing.assert_array_equal(items.to_index(ext), idx)
    np.testing.assert_array_equal(items.to_index_fast(ext), idx)
    assert items.to_index(["no-such-item"])[0] == -1
    # The stored table agrees with the mapping: (user_id, item_id) columns <-> (user_idx, item_idx).
    inter = ds.interactions
    np.testing.assert_array_equal(items.to_index_fast(inter["item_id"]), inter["item_idx"])
    np.testing.assert_array_equal(ds.user_ids.to_index_fast(inter["user_id"]), inter["user_idx"])
    # A fresh IdMap from the saved items.parquet (what serving loads) gives the same answers.
    saved = IdMap(pd.read_parquet(ds.root / "items.parquet").sort_values("item_idx")["item_id"])
    assert saved.to_external(idx) == ext
    assert ds.items["item_idx"].tolist() == list(range(ds.n_items))
    assert ds.users["user_idx"].tolist() == list(range(ds.n_users))

"""Evaluation: the harness goes through Recommender (served == evaluated), writes its files, computes
the protocol's numbers, handles baselines, and measures planted-interest recovery on synthetic data."""

import json

import numpy as np
import pytest
import torch

from mirec import metrics as M
from mirec.config import DataConfig, SynthConfig
from mirec.data import Dataset, prepare
from mirec.evaluate import evaluate, markdown_table
from mirec.models import ModelConfig, build, fit_baseline
from mirec.retrieval.recommender import Recommender
from mirec.train import save_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare(DataConfig(out_dir=str(out), synth=SynthConfig(n_users=120, n_items=150, n_categories=5,
                                                           seq_len=(10, 20))), progress=False)
    return Dataset(out)


@pytest.fixture(scope="module")
def ckpt(tiny, tmp_path_factory):
    torch.manual_seed(0)
    m = build(ModelConfig(name="comirec_sa", n_items=tiny.n_items, dim=8, K=3, max_len=10))
    return save_checkpoint(m, tmp_path_factory.mktemp("ck") / "sa", tiny.root / "items.parquet")


def test_evaluate_checkpoint_writes_files_and_matches_recommender(tiny, ckpt, tmp_path):
    out = evaluate(ckpt, tiny, split="test", out_dir=tmp_path)
    m = out["metrics"]
    for k in ("recall@20", "recall@50", "hitrate@20", "ndcg@50", "diversity@50", "ild@50", "coverage@50",
              "gini@50", "interest_cos", "usage_entropy", "effective_interests", "single_interest_share",
              "routing_entropy", "interest_category_recall"):
        assert m[k] is not None, k
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metrics"]["recall@50"] == m["recall@50"]
    assert "recall@50" in (tmp_path / "metrics.md").read_text()
    served = [json.loads(x) for x in (tmp_path / "served.jsonl").read_text().splitlines()]
    ex = tiny.eval_examples("test")
    assert len(served) == len(ex) == out["n_users"]
    # the served lists are exactly what the Recommender (the serving handler's object) answers
    rec = Recommender.from_checkpoint(ckpt)
    lists = rec.recommend([e.history for e in ex], n=50, exclude_seen=False)
    assert [[r.item_idx for r in lst] for lst in lists] == [s["items"] for s in served]
    assert [[r.interest for r in lst] for lst in lists] == [s["interests"] for s in served]
    # and the accuracy is the mean of the per-user metric over those lists
    want = np.mean([M.recall_at(np.array(s["items"]), e.targets, 50) for s, e in zip(served, ex)])
    assert m["recall@50"] == pytest.approx(want)
    v, stats = rec.interests([ex[0].history])
    assert served[0]["mean_pairwise_cos"] == pytest.approx(M.mean_pairwise_cos(v[0]))


def test_evaluate_popularity_by_hand(tiny):
    pop = fit_baseline("popularity", tiny.train_sequences(), tiny.n_items)
    m = evaluate(pop, tiny, split="valid", n_values=(20,))["metrics"]
    top = np.argsort(-pop.pop, kind="stable")[:20]
    ex = tiny.eval_examples("valid")
    assert m["recall@20"] == pytest.approx(np.mean([M.recall_at(top, e.targets, 20) for e in ex]))
    assert m["hitrate@20"] == pytest.approx(np.mean([M.hit_at(top, e.targets, 20) for e in ex]))
    assert m["single_interest_share"] == 1.0 and m["coverage@20"] == pytest.approx(20 / tiny.n_items)
    knn = evaluate(fit_baseline("itemknn", tiny.train_sequences(), tiny.n_items), tiny, split="valid")
    assert knn["metrics"]["recall@50"] is not None


def test_planted_recovery_rewards_interests_on_the_true_categories(tiny):
    """A 'model' whose K interests are the centroids of the user's true categories recovers them all;
    the measurement must say so (and a popularity list has no interests to measure)."""
    truth = tiny.truth()
    assert truth is not None
    cat = tiny.item_category
    C = tiny.n_categories
    emb = torch.zeros(tiny.n_items + 1, C)
    emb[1:] = torch.nn.functional.one_hot(torch.as_tensor(cat), C).float()
    t = truth[truth["phase"] == truth["phase"].max()].groupby("user_idx")["category_idx"].apply(list).to_dict()

    class Oracle(torch.nn.Module):
        is_neural, K = True, 4
        cfg = ModelConfig(name="oracle", n_items=tiny.n_items, dim=C, K=4, max_len=50)

        def __init__(self):
            super().__init__()
            self.item_emb = torch.nn.Embedding.from_pretrained(emb)
            self.aux = None
            self.users = []

        def item_vectors(self):
            return emb[1:].numpy()

        def interests(self, seq, mask):
            out = torch.zeros(len(seq), 4, C)
            for b, u in enumerate(self.users[: len(seq)]):
                cs = t[u][:4]
                for k in range(4):
                    out[b, k, cs[k % len(cs)]] = 1.0
            self.users = self.users[len(seq):]
            self.aux = mask[:, None, :].float().expand(-1, 4, -1) / mask.sum(1)[:, None, None]
            return out

    oracle = Oracle()
    ex = tiny.eval_examples("test")
    oracle.users = [e.user_idx for e in ex] * 2  # evaluate() asks for n = 20 and n = 50
    m = evaluate(oracle, tiny, split="test")["metrics"]
    cap = np.mean([min(len(t[e.user_idx]), 4) / len(t[e.user_idx]) for e in ex])
    assert m["interest_category_recall"] == pytest.approx(cap)
    assert m["interest_purity"] > 0.9  # < 1 only where a category has fewer than 20 items (ties at score 0)


def test_markdown_table():
    s = markdown_table([{"a": 1.23456, "b": None}, {"a": "x"}])
    assert s.splitlines()[0] == "| a | b |" and "1.2346" in s and "–" in s

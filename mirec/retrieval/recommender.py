"""Recommender = model + item index + aggregator + item metadata.

The one object that both offline evaluation (`mirec.evaluate`) and the TorchServe handler call, so
served answers equal offline evaluation:

    rec = Recommender.from_checkpoint("artifacts/models/mind")
    lists = rec.recommend([np.array([3, 17, 42])], n=20)        # -> [[Recommendation(item_idx, score, interest)]]
    vecs, stats = rec.interests([np.array([3, 17, 42])])        # [B, K, d], [{k, mean_pairwise_cos, interest_norms}]

Neural models: each interest searches the FAISS index (row i = item_idx i = embedding row i + 1) for its
top-M items, M = n (+ the history length when seen items are excluded); the aggregator merges.
Baselines (popularity, item-kNN): one list (K = 1) of the top-M items by their score.
An empty history gets the popularity list (interest 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mirec.models.base import pad_histories
from mirec.metrics import mean_pairwise_cos
from mirec.retrieval.aggregators import AggregationContext, Recommendation, get_aggregator
from mirec.retrieval.index import ItemIndex


class Recommender:
    def __init__(self, model, index: ItemIndex | None = None, items: pd.DataFrame | np.ndarray | None = None,
                 item_popularity: np.ndarray | None = None, aggregator: str = "merge",
                 aggregator_params: dict | None = None, batch_size: int = 256, index_kind: str = "flat"):
        self.model = model
        self.is_neural = getattr(model, "is_neural", True)
        if self.is_neural:
            model.eval()
            self.device = next(model.parameters()).device
            self.item_vectors = model.item_vectors()
            self.index = index or ItemIndex.build(self.item_vectors, index_kind)
            self.n_items = len(self.item_vectors)
        else:
            self.device, self.item_vectors, self.index = None, None, None
            self.n_items = len(item_popularity) if item_popularity is not None else model.score_histories([np.empty(0, np.int64)]).shape[1]
        if isinstance(items, pd.DataFrame):
            items = items.sort_values("item_idx")["category_idx"].to_numpy(np.int64)
        self.item_category = np.asarray(items, np.int64) if items is not None else np.zeros(self.n_items, np.int64)
        self.item_popularity = (np.asarray(item_popularity, np.float64) if item_popularity is not None
                                else np.zeros(self.n_items))
        self.aggregator_name = aggregator
        self.aggregator = get_aggregator(aggregator)
        self.aggregator_params = aggregator_params or {}
        self.batch_size = batch_size
        self.K = model.K

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | Path, aggregator: str = "merge", index_kind: str = "flat",
                        **kw) -> "Recommender":
        from mirec.checkpoint import load_model

        model, _ = load_model(checkpoint_dir)
        items = pd.read_parquet(Path(checkpoint_dir) / "items.parquet")
        pop = items.sort_values("item_idx")["popularity"].to_numpy() if "popularity" in items else None
        return cls(model, items=items, item_popularity=pop, aggregator=aggregator, index_kind=index_kind, **kw)

    # ---- interests -------------------------------------------------------------------------------
    @torch.inference_mode()  # cheaper per op than no_grad (no version counters); outputs leave as numpy
    def encode(self, histories: list[np.ndarray], extras: dict | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """-> (interests [B, K, d] float32, per-user routing/attention weights [K, len] (numpy)).
        extras (a dict, optional) receives "user_diversity" [B] when the model sets `user_diversity` after a
        forward (its own per-user diversity preference, e.g. HMISR's d_u), which the personalised aggregator
        then uses in place of the history features."""
        if not self.is_neural:
            raise TypeError(f"{type(self.model).__name__} has no interest vectors")
        out, aux, div = [], [], []
        L = self.model.cfg.max_len
        # interests in score space (unit length under cosine); a duck-typed model (the interface contract:
        # interests() + item_vectors()) is searched with its interests() as they are
        encode = getattr(self.model, "serving_interests", self.model.interests)
        for s in range(0, len(histories), self.batch_size):
            chunk = histories[s: s + self.batch_size]
            seq, mask = pad_histories(chunk, L, self.device)
            v = encode(seq, mask)
            out.append(v.float().cpu().numpy())
            a = self.model.aux.float().cpu().numpy()
            n = mask.sum(1).cpu().numpy()
            aux.extend(a[i, :, : n[i]] for i in range(len(chunk)))
            if getattr(self.model, "user_diversity", None) is not None:
                div.append(self.model.user_diversity.float().cpu().numpy())
        if extras is not None and div and len(div) == len(out):
            extras["user_diversity"] = np.concatenate(div)
        d = self.item_vectors.shape[1]
        return (np.concatenate(out) if out else np.zeros((0, self.K, d), np.float32)), aux

    def interests(self, histories: list[np.ndarray]) -> tuple[np.ndarray, list[dict]]:
        """-> (interests [B, K, d], stats per user: {k, mean_pairwise_cos, interest_norms})."""
        v, _ = self.encode(histories)
        return v, [self.interest_stats(x) for x in v]

    @staticmethod
    def interest_stats(v: np.ndarray) -> dict:
        c = mean_pairwise_cos(v)
        return {"k": int(len(v)), "mean_pairwise_cos": None if np.isnan(c) else c,
                "interest_norms": [float(x) for x in np.linalg.norm(v, axis=1)]}

    # ---- recommend -------------------------------------------------------------------------------
    def _candidates(self, histories, top_m, extras: dict | None = None):
        """-> scores [B, K, M], items [B, K, M], interests [B, K, d] | None, aux list | None (extras: see encode)."""
        if self.is_neural:
            v, aux = self.encode(histories, extras)
            scores, items = self.index.search(v, top_m)
            return scores, items, v, aux
        s = self.model.score_histories(histories)  # [B, N]
        m = min(top_m, s.shape[1])
        part = np.argpartition(-s, m - 1, axis=1)[:, :m]
        ps = np.take_along_axis(s, part, 1)
        order = np.argsort(-ps, axis=1, kind="stable")
        items = np.take_along_axis(part, order, 1)
        return np.take_along_axis(ps, order, 1)[:, None, :], items[:, None, :], None, None

    def recommend(self, histories: list[np.ndarray], n: int, exclude_seen: bool = True,
                  diversity: float | None = None, return_details: bool = False):
        """histories: list of item_idx arrays (time-ordered). -> list (per user) of n Recommendations.
        With return_details=True: (lists, details) where details[b] = {interests [K, d] | None,
        stats, aux [K, len] | None}."""
        histories = [np.asarray(h, np.int64) for h in histories]
        lists: list[list[Recommendation]] = [[] for _ in histories]
        details: list[dict] = [{} for _ in histories]
        nonempty = [i for i, h in enumerate(histories) if len(h)]
        for i in set(range(len(histories))) - set(nonempty):  # cold user: popularity
            order = np.argsort(-self.item_popularity, kind="stable")[:n]
            lists[i] = [Recommendation(int(j), float(self.item_popularity[j]), 0) for j in order]
            details[i] = {"interests": None, "stats": {"k": 0, "mean_pairwise_cos": None, "interest_norms": []},
                          "aux": None, "fallback": "popularity"}
        for s in range(0, len(nonempty), self.batch_size):
            idx = nonempty[s: s + self.batch_size]
            hs = [histories[i] for i in idx]
            seen = [np.unique(h) if exclude_seen else np.empty(0, np.int64) for h in hs]
            top_m = min(n + max(len(x) for x in seen), self.n_items)
            extras: dict = {}
            scores, items, v, aux = self._candidates(hs, top_m, extras)
            model_div = extras.get("user_diversity")
            for b, i in enumerate(idx):
                # Each user's pool is their own top-(n + |seen|) per interest, whatever else is in the batch:
                # diversity aggregators choose from the pool, so a batch-sized pool would make a user's
                # answer depend on who shares the batch (TorchServe batching must not change answers).
                m_b = min(n + len(seen[b]), self.n_items)
                ctx = AggregationContext(
                    n=n, item_category=self.item_category,
                    exclude=seen[b],
                    history=hs[b], interests=None if v is None else v[b],
                    interest_weights=None if aux is None else aux[b].sum(-1),
                    item_vectors=self.item_vectors, item_popularity=self.item_popularity,
                    diversity=diversity, params=self.aggregator_params,
                    model_diversity=None if model_div is None else float(model_div[b]))
                lists[i] = self.aggregator(scores[b][:, :m_b], items[b][:, :m_b], ctx)
                if return_details:
                    details[i] = {"interests": None if v is None else v[b],
                                  "stats": self.interest_stats(v[b]) if v is not None else
                                  {"k": 1, "mean_pairwise_cos": None, "interest_norms": []},
                                  "aux": None if aux is None else aux[b], "fallback": None}
        return (lists, details) if return_details else lists

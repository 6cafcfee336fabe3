"""Non-neural baselines, evaluated by the same harness (they have no interests: one list, interest 0).

- `popularity`: score(j) = number of training interactions of j.
- `itemknn`:    co-occurrence cosine sim(i, j) = c_ij / sqrt(c_i c_j) over training users (each user's
                set of items), optionally pruned to the top `neighbors` per item (None = unpruned);
                score(u, j) = Σ_{i ∈ hist(u)} sim(i, j) over the user's whole input sequence, or its last
                `history_len` items.
Both expose `score_histories(histories) -> [B, n_items]`, which `Recommender` ranks.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

BASELINES = ("popularity", "itemknn")


class Baseline:
    is_neural = False
    K = 1
    name = "?"

    def score_histories(self, histories: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError


class Popularity(Baseline):
    name = "popularity"

    def __init__(self, popularity: np.ndarray):
        self.pop = np.asarray(popularity, dtype=np.float32)

    @classmethod
    def fit(cls, sequences: dict[int, np.ndarray], n_items: int) -> "Popularity":
        seqs = list(sequences.values())
        allv = np.concatenate(seqs) if seqs else np.empty(0, np.int64)
        return cls(np.bincount(allv, minlength=n_items).astype(np.float32))

    def score_histories(self, histories: list[np.ndarray]) -> np.ndarray:
        return np.broadcast_to(self.pop, (len(histories), len(self.pop)))


class ItemKNN(Baseline):
    name = "itemknn"

    def __init__(self, sim: sp.csr_matrix, history_len: int | None = None):
        self.sim = sim.tocsr()
        self.history_len = history_len

    @classmethod
    def fit(cls, sequences: dict[int, np.ndarray], n_items: int, neighbors: int | None = None,
            history_len: int | None = None) -> "ItemKNN":
        rows, cols = [], []
        for r, s in enumerate(sequences.values()):
            u = np.unique(s)
            rows.append(np.full(len(u), r))
            cols.append(u)
        X = sp.csr_matrix((np.ones(sum(map(len, cols)), np.float32), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(len(cols), n_items))
        C = (X.T @ X).tocsr().astype(np.float32)  # co-occurrence counts
        cnt = np.asarray(X.sum(0)).ravel()
        C.setdiag(0)
        C.eliminate_zeros()
        C = C.tocoo()
        val = C.data / np.sqrt(cnt[C.row] * cnt[C.col])
        S = sp.csr_matrix((val, (C.row, C.col)), shape=(n_items, n_items))
        if neighbors is None:
            return cls(S, history_len)
        # keep the top `neighbors` per row
        out_r, out_c, out_v = [], [], []
        for i in range(n_items):
            a, b = S.indptr[i], S.indptr[i + 1]
            if b - a > neighbors:
                sel = np.argpartition(-S.data[a:b], neighbors)[:neighbors] + a
            else:
                sel = np.arange(a, b)
            out_r.append(np.full(len(sel), i))
            out_c.append(S.indices[sel])
            out_v.append(S.data[sel])
        S = sp.csr_matrix((np.concatenate(out_v), (np.concatenate(out_r), np.concatenate(out_c))),
                          shape=(n_items, n_items))
        return cls(S, history_len)

    def score_histories(self, histories: list[np.ndarray]) -> np.ndarray:
        n = self.sim.shape[0]
        if self.history_len:
            histories = [np.asarray(h)[-self.history_len:] for h in histories]
        rows = np.concatenate([np.full(len(h), i) for i, h in enumerate(histories)]) if histories else np.empty(0)
        cols = np.concatenate([np.asarray(h, np.int64) for h in histories]) if histories else np.empty(0)
        H = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(histories), n))
        H.data[:] = 1.0  # a set: repeated items count once
        return np.asarray((H @ self.sim).todense(), dtype=np.float32)


def fit_baseline(name: str, sequences: dict[int, np.ndarray], n_items: int, **kw) -> Baseline:
    if name == "popularity":
        return Popularity.fit(sequences, n_items)
    if name == "itemknn":
        return ItemKNN.fit(sequences, n_items, **kw)
    from mirec.errors import UnknownNameError

    raise UnknownNameError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")

"""In-process traffic simulator: ServedLog records from a synthetic catalogue, served through the
real retrieval path (`mirec.retrieval.ItemIndex` FAISS search + the `merge` aggregator), with
synthetic interest vectors standing in for a trained model.

It is the "in-process equivalent" of the serving stack used by the monitoring tests and
`benchmarks/monitoring.py`: same record schema (`mirec.serving.schema.ServedLog`), same merge and
interest attribution as the handler, no TorchServe/HTTP hop.

Modes of the simulated model (K interest slots per user):
- `healthy`: one slot per true user interest (category centre + noise, unit norm); slots beyond the
  user's true interests are jittered copies of them (realistic redundancy).
- `collapsed`: all K interests equal (exactly), so every served item is attributed to interest 0
  and comes from one category; mean pairwise cosine = 1.
- `dominant`: interest 0 has `dominance`x the norm of the others, so it supplies most items.
Traffic knobs: `shift` in [0, 1] moves the users' category prior (histories and, through the
interests, served categories) from the base mix to a permuted one (popular <-> rare);
`fallback_rate` answers a share of requests with the popularity fallback; `unknown_rate` is the
share of history items the server did not know; `popular_history` replaces that share of every history by
head items (history_popularity: head_share, mean_log_pop, as mirec.monitoring.popularity computes them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

import numpy as np

Mode = Literal["healthy", "collapsed", "dominant"]


@dataclass
class Catalogue:
    item_ids: list[str]
    item_category: np.ndarray  # [N] int
    category_names: list[str]
    item_vectors: np.ndarray  # [N, d] float32
    centres: np.ndarray  # [C, d]
    base_prior: np.ndarray  # [C] category prior of users' interests
    shifted_prior: np.ndarray  # [C] the prior at shift = 1
    popular: np.ndarray  # item_idx by popularity, most popular first

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def popularity(self) -> np.ndarray:
        """Zipf-like training popularity by the `popular` order."""
        pop = np.empty(self.n_items)
        pop[self.popular] = np.round(1000.0 / (np.arange(self.n_items) + 1.0) ** 0.9)
        return pop

    def item_meta(self) -> list[dict]:
        pop = self.popularity
        return [{"item_idx": j, "item_id": i, "category": self.category_names[c], "popularity": int(pop[j])}
                for j, (i, c) in enumerate(zip(self.item_ids, self.item_category.tolist()))]


def make_catalogue(n_items: int = 2000, n_categories: int = 20, dim: int = 16, seed: int = 0) -> Catalogue:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_categories, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = rng.dirichlet(np.full(n_categories, 3.0))
    item_cat = np.sort(rng.choice(n_categories, size=n_items, p=sizes))
    item_cat[:n_categories] = np.arange(n_categories)  # every category non-empty
    item_cat = np.sort(item_cat)
    vec = centres[item_cat] + 0.6 * rng.normal(size=(n_items, dim)) / np.sqrt(dim)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    # Zipf-like category prior; the shifted prior reverses the popularity order (popular <-> rare).
    rank = rng.permutation(n_categories)
    base = 1.0 / (rank + 1.0) ** 0.8
    base /= base.sum()
    shifted = np.empty_like(base)
    order = np.argsort(-base)
    shifted[order] = base[order[::-1]]
    popular = rng.permutation(n_items)
    return Catalogue([f"i{j}" for j in range(n_items)], item_cat, [f"c{c:02d}" for c in range(n_categories)],
                     vec.astype(np.float32), centres, base, shifted, popular)


class TrafficSimulator:
    """Serve simulated users through FAISS + merge; emit ServedLog-shaped dicts."""

    def __init__(self, catalogue: Catalogue | None = None, *, k: int = 4, n: int = 20,
                 model: str = "mirec_a", version: str = "1.0", arm: str | None = "A",
                 aggregator: str = "merge"):
        from mirec.retrieval import ItemIndex, get_aggregator

        self.cat = catalogue or make_catalogue()
        self.k, self.n = k, n
        self.model, self.version, self.arm = model, version, arm
        self.index = ItemIndex.build(self.cat.item_vectors, "flat", use_gpu=False)
        self.aggregate = get_aggregator(aggregator)

    def _interests(self, rng, cats: np.ndarray, w: np.ndarray, mode: Mode, dominance: float) -> np.ndarray:
        d = self.cat.centres.shape[1]
        slots = [cats[j % len(cats)] for j in range(self.k)]
        v = np.stack([self.cat.centres[c] for c in slots]) + 0.35 * rng.normal(size=(self.k, d)) / np.sqrt(d)
        # extra slots beyond the true interests: noisier copies (redundant interests happen in real models)
        if len(cats) < self.k:
            v[len(cats):] += 0.5 * rng.normal(size=(self.k - len(cats), d)) / np.sqrt(d)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        if mode == "collapsed":
            v = np.repeat(v[:1], self.k, axis=0)
        elif mode == "dominant":
            v[0] *= dominance
        return v.astype(np.float32)

    def window(self, n_requests: int, start: datetime, end: datetime, *, seed: int = 0, mode: Mode = "healthy",
               shift: float = 0.0, fallback_rate: float = 0.02, unknown_rate: float = 0.01,
               dominance: float = 3.0, popular_history: float = 0.0) -> list[dict]:
        """`n_requests` ServedLog dicts with timestamps uniform in [start, end)."""
        from mirec.retrieval import AggregationContext

        rng = np.random.default_rng(seed)
        C = len(self.cat.category_names)
        prior = (1 - shift) * self.cat.base_prior + shift * self.cat.shifted_prior
        prior = prior / prior.sum()
        span = (end - start).total_seconds()
        ts = sorted(start + timedelta(seconds=float(s)) for s in rng.uniform(0, span, size=n_requests))
        users, vecs = [], []
        from mirec.monitoring.popularity import head_mask

        pop = self.cat.popularity
        head = np.flatnonzero(head_mask(pop))
        tail = np.flatnonzero(~head_mask(pop))
        for i in range(n_requests):
            n_int = int(rng.integers(1, 5))
            cats = rng.choice(C, size=n_int, replace=False, p=prior)
            w = rng.dirichlet(np.ones(n_int))
            order = np.argsort(-w)
            cats, w = cats[order], w[order]
            hist_len = int(rng.integers(10, 81))
            counts = rng.multinomial(hist_len, w)
            hist: dict[str, int] = {}
            for c, m in zip(cats.tolist(), counts.tolist()):
                if m:
                    hist[self.cat.category_names[c]] = hist.get(self.cat.category_names[c], 0) + m
            noise = int(rng.binomial(hist_len, 0.05))
            for c in rng.integers(0, C, size=noise).tolist():
                hist[self.cat.category_names[c]] = hist.get(self.cat.category_names[c], 0) + 1
            unknown = int(rng.binomial(hist_len, unknown_rate))
            fb = bool(rng.random() < fallback_rate)
            # history popularity: a tail-heavy base mix, a `popular_history` share replaced by head items
            n_pop = int(rng.binomial(hist_len, popular_history))
            base_head = rng.binomial(hist_len - n_pop, 0.15)
            picks = np.concatenate([rng.choice(head, n_pop + base_head), rng.choice(tail, hist_len - n_pop - base_head)])
            hp = {"head_share": round(float((n_pop + base_head) / max(hist_len, 1)), 6),
                  "mean_log_pop": round(float(np.log1p(pop[picks]).mean()), 6)}
            users.append((f"u{seed}-{i}", hist_len + noise, unknown, hist, fb, hp))
            vecs.append(self._interests(rng, cats, w, mode, dominance))
        q = np.stack(vecs)
        scores, items = self.index.search(q, self.n)
        out = []
        for i, (uid, hlen, unknown, hist, fb, hp) in enumerate(users):
            if fb:
                chosen = [(int(j), 0.0, -1) for j in self.cat.popular[: self.n]]
                stats = {"k": 0, "mean_pairwise_cos": None, "interest_norms": []}
            else:
                ctx = AggregationContext(n=self.n, item_category=self.cat.item_category)
                chosen = [(r.item_idx, r.score, r.interest) for r in self.aggregate(scores[i], items[i], ctx)]
                v = q[i]
                norms = np.linalg.norm(v, axis=1)
                u = v / norms[:, None]
                cos = u @ u.T
                iu = np.triu_indices(self.k, 1)
                stats = {"k": self.k, "mean_pairwise_cos": float(cos[iu].mean()),
                         "interest_norms": [round(float(x), 4) for x in norms]}
            out.append({
                "schema_version": 1, "ts": ts[i].isoformat().replace("+00:00", "Z"),
                "request_id": f"r{seed}-{i}", "user_id": uid, "arm": self.arm, "model": self.model,
                "version": self.version, "n": self.n, "diversity": None, "history_len": hlen,
                "unknown_items": unknown, "history_source": "none" if fb else "request",
                "fallback": "popularity" if fb else None, "feast_fallback": False,
                "items": [{"item_id": self.cat.item_ids[j], "score": round(float(s), 5), "interest": int(k),
                           "category": self.cat.category_names[int(self.cat.item_category[j])]}
                          for j, s, k in chosen],
                "interest_stats": stats, "history_categories": hist, "latency_ms": float(rng.gamma(4.0, 3.0)),
                "history_popularity": hp,
            })
        return out


def write_jsonl(records: list[dict], path: str | Path, append: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def hour(i: int, base: datetime | None = None) -> tuple[datetime, datetime]:
    """The i-th one-hour window after `base` (default 2026-01-01T00:00Z)."""
    base = base or datetime(2026, 1, 1, tzinfo=timezone.utc)
    return base + timedelta(hours=i), base + timedelta(hours=i + 1)

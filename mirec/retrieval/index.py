"""Item index over FAISS: exact (Flat), IVF or HNSW, inner-product; search K interests in one call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

IndexKind = Literal["flat", "ivf", "hnsw"]

#: the index parameter (in ItemIndex.params, index.json and meta.json) that sets an index kind's search effort
EFFORT_PARAM = {"hnsw": "ef_search", "ivf": "nprobe"}
#: search-effort values tried by `ItemIndex.tune` (efSearch for HNSW, nprobe for IVF), cheapest first
EFFORT_LADDER = {"hnsw": (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048),
                 "ivf": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)}


def exact_top_k(item_vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Brute-force inner-product top-k ids [Q, k] (the reference an approximate index is measured against)."""
    _, ids = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32),
                       np.ascontiguousarray(item_vectors, dtype=np.float32), k, metric=faiss.METRIC_INNER_PRODUCT)
    return ids


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found ∩ exact| / |exact| (ids; -1 pads are never a hit)."""
    hits = [len(np.intersect1d(f[f >= 0], e[e >= 0])) / max(1, int((e >= 0).sum())) for f, e in zip(found, exact)]
    return float(np.mean(hits)) if hits else 1.0


class ItemIndex:
    """Inner-product index over item vectors. Row i of the index is item_idx i."""

    def __init__(self, index: faiss.Index, kind: IndexKind, params: dict | None = None):
        self.index = index
        self.kind = kind
        self.params = params or {}

    @property
    def n_items(self) -> int:
        return self.index.ntotal

    @property
    def dim(self) -> int:
        return self.index.d

    @classmethod
    def build(cls, item_vectors: np.ndarray, kind: IndexKind = "flat", *, nlist: int | None = None,
              nprobe: int = 16, hnsw_m: int = 32, ef_search: int = 128, ef_construction: int = 200,
              use_gpu: bool | None = None, seed: int = 0) -> "ItemIndex":
        x = np.ascontiguousarray(item_vectors, dtype=np.float32)
        n, d = x.shape
        params: dict = {}
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "ivf":
            nlist = nlist or max(1, min(4096, int(4 * np.sqrt(n))))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.train(x)
            index.nprobe = min(nprobe, nlist)
            params = {"nlist": nlist, "nprobe": index.nprobe}
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
            params = {"hnsw_m": hnsw_m, "ef_search": ef_search, "ef_construction": ef_construction}
        else:
            raise ValueError(f"unknown index kind {kind!r} (flat, ivf, hnsw)")
        index.add(x)
        if use_gpu is None:
            use_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
        if use_gpu and kind != "hnsw":  # faiss has no GPU HNSW; Flat/IVF move to the GPU
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
            params["gpu"] = True
        return cls(index, kind, params)

    def search(self, interests: np.ndarray, top_m: int) -> tuple[np.ndarray, np.ndarray]:
        """interests [B, K, d] (or [K, d]) -> (scores [B, K, M], item_idx [B, K, M]); -1 pads missing."""
        q = np.asarray(interests, dtype=np.float32)
        squeeze = q.ndim == 2
        if squeeze:
            q = q[None]
        b, k, d = q.shape
        m = min(top_m, self.n_items)
        scores, idx = self.index.search(np.ascontiguousarray(q.reshape(b * k, d)), m)
        scores, idx = scores.reshape(b, k, m), idx.reshape(b, k, m)
        return (scores[0], idx[0]) if squeeze else (scores, idx)

    # ---- search effort and measured recall ----------------------------------------------------------
    @property
    def effort_name(self) -> str | None:
        return EFFORT_PARAM.get(self.kind)

    def set_effort(self, value: int) -> None:
        """efSearch (HNSW) or nprobe (IVF); a Flat index is exact and has none."""
        if self.kind == "flat":
            raise ValueError("a flat index has no search effort")
        value = min(int(value), self.params["nlist"]) if self.kind == "ivf" else int(value)
        # FAISS's parameter space sets it on CPU and GPU indexes alike (a GPU IVF has no plain nprobe field)
        space = faiss.GpuParameterSpace() if self.params.get("gpu") else faiss.ParameterSpace()
        space.set_index_parameter(self.index, {"hnsw": "efSearch", "ivf": "nprobe"}[self.kind], value)
        self.params[self.effort_name] = value

    def recall(self, item_vectors: np.ndarray, queries: np.ndarray, k: int,
               exact: np.ndarray | None = None) -> float:
        """Recall@k of this index against brute force over `item_vectors`, for `queries` [Q, d]."""
        k = min(k, self.n_items)
        exact = exact_top_k(item_vectors, queries, k) if exact is None else exact
        _, found = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return recall_at_k(found, exact)

    def tune(self, item_vectors: np.ndarray, queries: np.ndarray, k: int, target: float) -> dict:
        """Pick the cheapest search effort whose recall@k reaches `target` on `queries`, set it, and return
        what was measured: {"recall_k", "target_recall", "recall", "met", "curve": [[effort, recall], ...]}.
        A target no effort reaches (an inner-product HNSW graph can plateau far below 1 when it is built too
        sparse) sets the cheapest effort within 0.01 of the best recall seen, with met=False (the caller warns).
        A Flat index is exact: recall 1 without a search."""
        k = min(k, self.n_items)
        out = {"recall_k": k, "target_recall": target, "queries": int(len(queries))}
        if self.kind == "flat":
            return {**out, "recall": 1.0, "met": True, "curve": []}
        exact = exact_top_k(item_vectors, queries, k)
        curve = []
        for effort in EFFORT_LADDER[self.kind]:
            if self.kind == "ivf" and effort > self.params["nlist"]:
                break
            self.set_effort(effort)
            r = self.recall(item_vectors, queries, k, exact)
            curve.append([int(effort), round(r, 4)])
            if r >= target:
                break
        if curve[-1][1] >= target:
            return {**out, "recall": curve[-1][1], "met": True, "curve": curve}
        best = max(r for _, r in curve)
        effort, recall = next((e, r) for e, r in curve if r >= best - 0.01)
        self.set_effort(effort)
        return {**out, "recall": recall, "met": False, "curve": curve}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        cpu = faiss.index_gpu_to_cpu(self.index) if self.params.get("gpu") else self.index
        faiss.write_index(cpu, str(path))
        path.with_suffix(".json").write_text(json.dumps({"kind": self.kind, "params": self.params}))

    @classmethod
    def load(cls, path: str | Path) -> "ItemIndex":
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        index = faiss.read_index(str(path))
        params = {k: v for k, v in meta["params"].items() if k != "gpu"}
        if meta["kind"] == "hnsw" and "ef_search" in params:
            index.hnsw.efSearch = params["ef_search"]
        if meta["kind"] == "ivf" and "nprobe" in params:
            index.nprobe = params["nprobe"]
        return cls(index, meta["kind"], params)

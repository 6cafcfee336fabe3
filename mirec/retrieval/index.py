"""Item index over FAISS: exact (Flat), IVF or HNSW, inner-product; search K interests in one call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

IndexKind = Literal["flat", "ivf", "hnsw"]


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

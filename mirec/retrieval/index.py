"""Item index over FAISS, inner-product; search K interests in one call.

Kinds (`ItemIndex.build`), cheapest memory first:
    flat       exact (IndexFlatIP): 4·d bytes/item, recall 1, cost O(N·d) per query
    ivf        IVF-Flat (nlist clusters, search `nprobe` of them)
    hnsw       HNSW graph over float vectors (`ef_search`)
    hnsw_sq8   HNSW graph over 8-bit scalar-quantised vectors (IndexHNSWSQ, 1 byte/dim: a quarter of hnsw's
               vector memory; `ef_search`)
    ivfpq_fs   IVF + 4-bit PQ fast-scan codes (IndexIVFPQFastScan, `pq_m` sub-quantizers of 4 bits = d/4 bytes/item
               with pq_m = d/2) whose top `k_factor`·k candidates are re-ranked exactly against the float vectors
               (IndexRefineFlat = FAISS's "IVF{nlist},PQ{m}x4fs,RFlat"); effort = `nprobe`, `k_factor` a build
               parameter (index.json) that `set_k_factor` changes and `tune` doubles (up to K_FACTOR_MAX) when no
               nprobe reaches the target
Every ANN kind has one search-effort knob (EFFORT_PARAM) that `tune` sets to the cheapest value reaching a target
recall and `set_effort` sets directly. `search` sends all B·K interest vectors to FAISS as one batched search.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Literal

import faiss
import numpy as np

IndexKind = Literal["flat", "ivf", "hnsw", "hnsw_sq8", "ivfpq_fs"]
INDEX_KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw", "hnsw_sq8", "ivfpq_fs")
#: kinds FAISS can move to a GPU (it has no GPU HNSW; the fast-scan refine index stays on the CPU)
GPU_KINDS: tuple[str, ...] = ("flat", "ivf")

#: the index parameter (in ItemIndex.params, index.json and meta.json) that sets an index kind's search effort
EFFORT_PARAM = {"hnsw": "ef_search", "hnsw_sq8": "ef_search", "ivf": "nprobe", "ivfpq_fs": "nprobe"}
#: FAISS ParameterSpace name of each effort parameter
_FAISS_PARAM = {"ef_search": "efSearch", "nprobe": "nprobe"}
_HNSW_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
_IVF_LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
#: search-effort values tried by `ItemIndex.tune` (efSearch for HNSW, nprobe for IVF), cheapest first
EFFORT_LADDER = {"hnsw": _HNSW_LADDER, "hnsw_sq8": _HNSW_LADDER, "ivf": _IVF_LADDER, "ivfpq_fs": _IVF_LADDER}


#: ivfpq_fs: `tune` doubles k_factor up to this when no nprobe reaches the target
K_FACTOR_MAX = 64


def default_nlist(n: int) -> int:
    return max(1, min(4096, int(4 * np.sqrt(n))))


def default_pq_m(d: int) -> int:
    """4-bit fast-scan sub-quantizers: d/2 (2 dims each, d/4 bytes a vector), the largest divisor of d at most d/2."""
    return next(m for m in range(max(1, d // 2), 0, -1) if d % m == 0)


def exact_top_k(item_vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Brute-force inner-product top-k ids [Q, k] (the reference an approximate index is measured against)."""
    _, ids = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32),
                       np.ascontiguousarray(item_vectors, dtype=np.float32), k, metric=faiss.METRIC_INNER_PRODUCT)
    return ids


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found ∩ exact| / |exact| (ids [..., k], e.g. [Q, k] or [B, K, k]; -1 pads are never
    a hit)."""
    found, exact = np.asarray(found), np.asarray(exact)
    found, exact = found.reshape(-1, found.shape[-1]), exact.reshape(-1, exact.shape[-1])
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
              pq_m: int | None = None, k_factor: int = 4, use_gpu: bool | None = None,
              seed: int = 0) -> "ItemIndex":
        x = np.ascontiguousarray(item_vectors, dtype=np.float32)
        n, d = x.shape
        params: dict = {}
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind in ("ivf", "ivfpq_fs"):
            nlist = min(nlist or default_nlist(n), n)
            if kind == "ivf":
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                pq_m = pq_m or default_pq_m(d)
                if d % pq_m:
                    raise ValueError(f"pq_m {pq_m} must divide the dimension {d}")
                index = faiss.index_factory(d, f"IVF{nlist},PQ{pq_m}x4fs,RFlat", faiss.METRIC_INNER_PRODUCT)
                index.k_factor = float(k_factor)
                params = {"pq_m": pq_m, "k_factor": int(k_factor)}
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.seed = seed
            index.train(x)
            ivf.nprobe = min(nprobe, nlist)
            params = {"nlist": nlist, "nprobe": ivf.nprobe, **params}
        elif kind in ("hnsw", "hnsw_sq8"):
            if kind == "hnsw":
                index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            else:
                index = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, hnsw_m, faiss.METRIC_INNER_PRODUCT)
                index.train(x)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
            params = {"hnsw_m": hnsw_m, "ef_search": ef_search, "ef_construction": ef_construction}
        else:
            raise ValueError(f"unknown index kind {kind!r} ({', '.join(INDEX_KINDS)})")
        index.add(x)
        if use_gpu is None:
            use_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
        if use_gpu and kind in GPU_KINDS:  # faiss has no GPU HNSW; Flat/IVF move to the GPU
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
        """efSearch (hnsw, hnsw_sq8) or nprobe (ivf, ivfpq_fs); a Flat index is exact and has none."""
        if self.kind == "flat":
            raise ValueError("a flat index has no search effort")
        value = int(value)
        if "nlist" in self.params:
            value = min(value, self.params["nlist"])
        # FAISS's parameter space sets it on CPU and GPU indexes alike (a GPU IVF has no plain nprobe field) and
        # through the refine wrapper of ivfpq_fs into its IVF base
        space = faiss.GpuParameterSpace() if self.params.get("gpu") else faiss.ParameterSpace()
        space.set_index_parameter(self.index, _FAISS_PARAM[self.effort_name], value)
        self.params[self.effort_name] = value

    def set_k_factor(self, value: int) -> None:
        """ivfpq_fs: re-rank the top k_factor·k fast-scan candidates exactly."""
        if self.kind != "ivfpq_fs":
            raise ValueError(f"a {self.kind} index has no k_factor")
        self.index.k_factor = float(value)
        self.params["k_factor"] = int(value)

    def recall(self, item_vectors: np.ndarray, queries: np.ndarray, k: int,
               exact: np.ndarray | None = None) -> float:
        """Recall@k of this index against brute force over `item_vectors`, for `queries` [Q, d]."""
        k = min(k, self.n_items)
        exact = exact_top_k(item_vectors, queries, k) if exact is None else exact
        _, found = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return recall_at_k(found, exact)

    def tune(self, item_vectors: np.ndarray, queries: np.ndarray, k: int, target: float,
             recall_fn: Callable[["ItemIndex"], float] | None = None) -> dict:
        """Pick the cheapest search effort whose recall@k reaches `target` on `queries`, set it, and return
        what was measured: {"recall_k", "target_recall", "recall", "met", "curve": [[effort, recall], ...]}
        (ivfpq_fs: the curve at the final k_factor, and "k_factor_curve": [[k_factor, last nprobe, best recall]]).
        `recall_fn(self)` replaces the per-query recall@k when given (e.g. the answer recall of the served top-n
        against an exact index, `mirec.serving.packaging`): the curve is then of that measure.
        A target no effort reaches (an inner-product HNSW graph can plateau far below 1 when it is built too
        sparse) sets the cheapest effort within 0.01 of the best recall seen, with met=False (the caller warns).
        A Flat index is exact: recall 1 without a search."""
        k = min(k, self.n_items)
        out = {"recall_k": k, "target_recall": target, "queries": int(len(queries))}
        if self.kind == "flat":
            return {**out, "recall": 1.0, "met": True, "curve": []}
        exact = exact_top_k(item_vectors, queries, k) if recall_fn is None else None

        def sweep() -> list[list]:
            curve = []
            for effort in EFFORT_LADDER[self.kind]:
                if "nlist" in self.params and effort > self.params["nlist"]:
                    break
                self.set_effort(effort)
                r = recall_fn(self) if recall_fn is not None else self.recall(item_vectors, queries, k, exact)
                curve.append([int(effort), round(r, 4)])
                if r >= target:
                    break
            return curve

        curve = sweep()
        if self.kind == "ivfpq_fs":
            # 4-bit PQ cannot order items that differ by less than its quantisation error (tight clusters of a
            # trained table): when the nprobe sweep plateaus below the target, re-rank more candidates exactly
            out["k_factor_curve"] = [[self.params["k_factor"], curve[-1][0], max(r for _, r in curve)]]
            while curve[-1][1] < target and self.params["k_factor"] < K_FACTOR_MAX:
                self.set_k_factor(self.params["k_factor"] * 2)
                curve = sweep()
                out["k_factor_curve"].append([self.params["k_factor"], curve[-1][0], max(r for _, r in curve)])
        if curve[-1][1] >= target:
            return {**out, "recall": curve[-1][1], "met": True, "curve": curve}
        best = max(r for _, r in curve)
        effort, recall = next((e, r) for e, r in curve if r >= best - 0.01)
        self.set_effort(effort)
        return {**out, "recall": recall, "met": False, "curve": curve}

    def save(self, path: str | Path, info: dict | None = None) -> None:
        """index.faiss (a CPU index) + index.json {"kind", "params", "info"?}; `info`: how the index was chosen and
        what it measured (packaging), kept with it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        cpu = faiss.index_gpu_to_cpu(self.index) if self.params.get("gpu") else self.index
        faiss.write_index(cpu, str(path))
        spec = {"kind": self.kind, "params": self.params, **({"info": info} if info is not None else {})}
        path.with_suffix(".json").write_text(json.dumps(spec))

    @classmethod
    def load(cls, path: str | Path) -> "ItemIndex":
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        index = faiss.read_index(str(path))
        params = {k: v for k, v in meta["params"].items() if k != "gpu"}
        out = cls(index, meta["kind"], params)
        effort = EFFORT_PARAM.get(meta["kind"])
        if effort and effort in params:  # index.json wins over what the file holds (an edited operating point)
            out.set_effort(params[effort])
        if meta["kind"] == "ivfpq_fs" and "k_factor" in params:
            out.set_k_factor(params["k_factor"])
        return out

"""The monitoring reference (REF_DIR): what the packaged model serves for known users, in the served-log format.

```
REF_DIR/                      one model's reference ...
  served.jsonl                ServedLog records (same schema and writer fields as the live log)
  items.parquet               item_id, category (+ item_idx, popularity): the catalogue
  summary.json                counts, models, versions, the serving settings it was made with, window measures
REF_DIR/<model>/...           ... or one sub-folder per model (the training pipeline writes this layout)
```
**Built with exactly what is served** (`reference_from_mar`): the candidate's MAR (or its unpacked folder) is
loaded with `RecommendService.load`, the handler's own code, so the aggregator and its parameters (incl. the
d_u calibration carried in meta.json), the index and its search effort are the MAR's; every valid + test user's
evaluation history is sent as a `RecommendRequest` with the request defaults the API serves (`n` 50,
`exclude_seen` true, `diversity` null -> `auto` -> `personalised`), and each answer is written as the API writes
its ServedLog line. The serving settings go into summary.json (`serving`); `mirec monitor --served-meta`
refuses a reference whose settings differ from the served model's meta.json (`check_serving`).

`build_reference(records, out_dir, item_meta)` writes REF_DIR from ServedLog-like records;
`records_from_evaluation(...)` turns evaluation output into such records (kept for offline studies: it does
not reproduce the served settings); `load_reference(dir)` reads one or several models back.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
from pydantic import ValidationError

from mirec.errors import DataError
from mirec.monitoring import measures as M
from mirec.serving.schema import ServedLog

SERVING_KEYS = ("aggregator", "aggregator_params_sha256", "weights_sha256", "index_kind", "index_effort", "n",
                "exclude_seen", "diversity")


def _item_table(item_meta: Any) -> pd.DataFrame | None:
    """item_meta: DataFrame (item_id[, item_idx, popularity], category), list of dicts, or {item_id: category}."""
    if item_meta is None:
        return None
    if isinstance(item_meta, Mapping):
        df = pd.DataFrame({"item_id": list(item_meta.keys()), "category": list(item_meta.values())})
    elif isinstance(item_meta, pd.DataFrame):
        df = item_meta.copy()
    else:
        df = pd.DataFrame(list(item_meta))
    if "item_id" not in df.columns:
        raise DataError("item_meta needs an item_id column")
    if "category" not in df.columns:
        df["category"] = None
    df["item_id"] = df["item_id"].astype(str)
    df["category"] = df["category"].astype(object).where(df["category"].notna(), None)
    keep = [c for c in ("item_idx", "item_id", "category", "popularity") if c in df.columns]
    return df[keep].drop_duplicates("item_id").reset_index(drop=True)


def _get(obj: Any, *names: str, default=None):
    for n in names:
        if isinstance(obj, Mapping) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    return default


def records_from_evaluation(served: Iterable[Any], item_meta: Any = None, *, model: str = "reference",
                            version: str = "eval", arm: str | None = None, n: int | None = None,
                            ts: datetime | None = None) -> list[dict]:
    """Per-user served lists from offline evaluation -> ServedLog dicts (offline studies; the pipeline's
    reference is `reference_from_mar`, which serves with the MAR's settings).

    Each element (dict or object) may hold: `user`/`user_id`/`user_idx`; `items` (item ids, or item_idx ints
    resolved through item_meta's item_idx column, or dicts with item_idx|item_id, score, interest); `scores`,
    `interests` (parallel lists); `interest_stats` dict or `mean_pairwise_cos`, `interest_norms`, `k`, or
    `interest_vectors` [K, d]; `history` (item ids/idx) or `history_categories` ({category: count}); `history_len`."""
    table = _item_table(item_meta)
    by_idx: dict[int, tuple[str, str | None]] = {}
    by_id: dict[str, str | None] = {}
    pop = None
    if table is not None:
        by_id = dict(zip(table["item_id"], table["category"]))
        if "item_idx" in table.columns:
            by_idx = {int(i): (iid, c) for i, iid, c in zip(table["item_idx"], table["item_id"], table["category"])}
            if "popularity" in table.columns:
                pop = table.sort_values("item_idx")["popularity"].to_numpy(np.float64)
    ts = ts or datetime.now(timezone.utc)

    def resolve(x) -> tuple[str, str | None]:
        if isinstance(x, (int, np.integer)) and by_idx:
            if int(x) not in by_idx:
                raise DataError(f"item_idx {x} not in item_meta")
            return by_idx[int(x)]
        return str(x), by_id.get(str(x))

    out = []
    for j, u in enumerate(served):
        user = _get(u, "user_id", "user", "user_idx")
        raw = list(_get(u, "items", default=[]) or [])
        scores = list(_get(u, "scores", default=[]) or [])
        interests = list(_get(u, "interests_per_item", "item_interests", "interests", default=[]) or [])
        items = []
        for i, it in enumerate(raw):
            if isinstance(it, (int, np.integer, str)):
                iid, cat = resolve(it)
                sc = scores[i] if i < len(scores) else 0.0
                k = interests[i] if i < len(interests) and np.ndim(interests[i]) == 0 else 0
            else:
                key = _get(it, "item_idx")
                iid, cat = resolve(int(key)) if key is not None and by_idx else resolve(_get(it, "item_id", "item_idx"))
                sc, k = _get(it, "score", default=0.0), _get(it, "interest", default=0)
                cat = _get(it, "category") or cat
            items.append({"item_id": iid, "score": float(sc), "interest": int(k), "category": cat})
        stats = _get(u, "interest_stats")
        vecs = _get(u, "interest_vectors")
        if stats is None and vecs is not None and np.ndim(vecs) == 2:  # [K, d] interest vectors given
            v = np.asarray(vecs, dtype=float)
            norms = np.linalg.norm(v, axis=1)
            unit = v / np.maximum(norms[:, None], 1e-12)
            iu = np.triu_indices(len(v), 1)
            stats = {"k": int(len(v)), "mean_pairwise_cos": float((unit @ unit.T)[iu].mean()) if len(v) > 1 else None,
                     "interest_norms": [float(x) for x in norms]}
        if stats is None:
            norms = _get(u, "interest_norms", default=[]) or []
            stats = {"k": int(_get(u, "k", default=len(norms)) or 0),
                     "mean_pairwise_cos": _get(u, "mean_pairwise_cos"),
                     "interest_norms": [float(x) for x in norms]}
        hist_cats = _get(u, "history_categories")
        history = _get(u, "history")
        hist_pop = None
        if history is not None:
            if hist_cats is None:
                hist_cats = {}
                for h in list(history):
                    c = resolve(h)[1]
                    if c is not None:
                        hist_cats[c] = hist_cats.get(c, 0) + 1
            if pop is not None and all(isinstance(h, (int, np.integer)) for h in history):
                from mirec.monitoring.popularity import history_popularity

                hist_pop = history_popularity(np.asarray(history, np.int64), pop)
        hlen = _get(u, "history_len", default=None)
        if hlen is None:
            hlen = len(history) if history is not None else sum((hist_cats or {}).values())
        rec = {"ts": ts.isoformat(), "request_id": f"ref-{j}", "user_id": None if user is None else str(user),
               "arm": arm, "model": model, "version": version, "n": int(n or len(items) or 1),
               "history_len": int(hlen), "history_source": "request", "items": items,
               "interest_stats": dict(stats), "history_categories": dict(hist_cats or {}),
               "history_popularity": hist_pop}
        try:
            out.append(ServedLog.model_validate(rec).model_dump(mode="json"))
        except ValidationError as exc:
            raise DataError(f"evaluation record {j} does not make a ServedLog: {exc.errors()[0]['msg']}") from None
    return out


# ---- serving settings ---------------------------------------------------------------------------------------
def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def serving_settings(meta: dict, *, n: int, exclude_seen: bool, diversity: float | None) -> dict:
    """What decides a served answer, from a MAR's meta.json + the request defaults the reference was served with."""
    ix = meta.get("index") or {}
    effort = {k: ix[k] for k in ("ef_search", "nprobe") if k in ix}
    return {"model": meta.get("name"), "version": str(meta.get("version")), "aggregator": meta.get("aggregator", "merge"),
            "aggregator_params_sha256": _sha(meta.get("aggregator_params") or {}),
            "aggregator_params_keys": sorted((meta.get("aggregator_params") or {}).keys()),
            "weights_sha256": meta.get("weights_sha256"), "index_kind": ix.get("kind"), "index_effort": effort,
            "n": int(n), "exclude_seen": bool(exclude_seen), "diversity": diversity}


def read_served_meta(path: str | Path, model: str | None = None) -> dict:
    """meta.json of a served model: a meta.json file, an unpacked MAR folder, a .mar file, or a model store
    folder holding <model>.mar."""
    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        return json.loads(p.read_text())
    if p.is_file():
        try:
            with zipfile.ZipFile(p) as z:
                return json.loads(z.read("meta.json"))
        except (zipfile.BadZipFile, KeyError):
            raise DataError(f"{p} is neither a meta.json nor a MAR holding meta.json") from None
    if p.is_dir():
        if (p / "meta.json").is_file():
            return json.loads((p / "meta.json").read_text())
        if model and (p / f"{model}.mar").is_file():
            return read_served_meta(p / f"{model}.mar")
        if model and (p / model / "meta.json").is_file():
            return json.loads((p / model / "meta.json").read_text())
    raise DataError(f"no served model meta.json found at {p}" + (f" for model {model!r}" if model else "")
                    + " (give a meta.json, an unpacked MAR folder, a .mar, or a model store holding <model>.mar)")


def check_serving(reference_settings: dict | None, meta: dict, model: str) -> list[str]:
    """Differences between the reference's serving settings and a served model's meta.json ([] = same)."""
    if not reference_settings:
        return [f"the reference of {model} records no serving settings (made from evaluation records or by an older "
                "mirec): rebuild it from the MAR (mirec.monitoring.reference.reference_from_mar)"]
    served = serving_settings(meta, n=reference_settings.get("n", 50), exclude_seen=reference_settings.get("exclude_seen", True),
                              diversity=reference_settings.get("diversity"))
    diffs = []
    for k in ("version", "aggregator", "aggregator_params_sha256", "weights_sha256", "index_kind", "index_effort"):
        if reference_settings.get(k) != served.get(k):
            a, b = reference_settings.get(k), served.get(k)
            if k.endswith("sha256"):
                a, b = str(a)[:12], str(b)[:12]
            diffs.append(f"{k}: reference {a!r} vs served {b!r}")
    return diffs


# ---- the reference from the MAR -------------------------------------------------------------------------------
def _unpacked(mar: str | Path, tmp: Path) -> Path:
    p = Path(mar)
    if p.is_dir():
        return p
    with zipfile.ZipFile(p) as z:
        z.extractall(tmp)
    return tmp


def served_log_records(svc, requests: list, *, arm: str | None = None, ts: datetime | list | None = None,
                       request_ids: list[str] | None = None, head: np.ndarray | None = None) -> list[dict]:
    """Answer `requests` (RecommendRequest) with a RecommendService and write each answer as the API writes its
    ServedLog line (mirec.serving.api: same fields from the handler's answer), plus `history_popularity`
    (mirec.monitoring.popularity, from the MAR's item popularity)."""
    from mirec.monitoring.popularity import head_mask, history_popularity

    pop = svc.recommender.item_popularity
    custom_head = head
    head = head_mask(pop) if head is None else head
    now = datetime.now(timezone.utc)
    out = []
    answers = svc.answer(list(requests))
    for j, (req, a) in enumerate(zip(requests, answers)):
        known = svc.item_ids.to_index(req.history or [])
        known = known[known >= 0]
        t = ts[j] if isinstance(ts, list) else (ts or now)
        rec = ServedLog(request_id=request_ids[j] if request_ids else f"r-{j}", user_id=req.user_id, arm=arm,
                        model=a.model, version=a.version, n=req.n, diversity=req.diversity, history_len=a.history_len,
                        unknown_items=a.unknown_items, history_source=a.history_source, fallback=a.fallback,
                        feast_fallback=a.feast_fallback, items=a.items, interest_stats=a.interest_stats,
                        history_categories=a.history_categories, latency_ms=0.0, ts=t,
                        history_popularity=a.history_popularity if custom_head is None
                        else history_popularity(known, pop, head))
        out.append(rec.model_dump(mode="json"))
    return out


def load_service(mar: str | Path, tmp: str | Path, model_name: str | None = None, device: str = "cpu"):
    """RecommendService (the TorchServe handler's code) of a MAR file or an unpacked MAR folder."""
    from mirec.serving.service import RecommendService

    return RecommendService.load(_unpacked(mar, Path(tmp)), model_name=model_name, device=device)


def reference_from_mar(mar: str | Path, dataset_dir: str | Path, *, splits: tuple[str, ...] = ("valid", "test"),
                       n: int | None = None, arm: str | None = None, model_name: str | None = None,
                       max_users: int | None = None, batch_size: int = 256, device: str = "cpu",
                       ts: datetime | None = None) -> tuple[list[dict], dict]:
    """Serve every user of `splits` (their evaluation input histories) through the MAR's RecommendService with
    the API's request defaults -> (ServedLog dicts as the API writes them, serving settings)."""
    from mirec.data import Dataset
    from mirec.monitoring.popularity import head_mask
    from mirec.serving.schema import RecommendRequest

    n = int(n or RecommendRequest.model_fields["n"].default)
    exclude_seen = bool(RecommendRequest.model_fields["exclude_seen"].default)
    ds = Dataset(dataset_dir) if not hasattr(dataset_dir, "eval_examples") else dataset_dir
    examples = [e for s in splits for e in ds.eval_examples(s)]
    if max_users is not None:
        examples = examples[:max_users]
    if not examples:
        raise DataError(f"no users in splits {splits} of {dataset_dir}: the reference needs served answers")
    ts = ts or datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="mirec-ref-mar-") as tmp:
        svc = load_service(mar, tmp, model_name=model_name, device=device)
        meta = dict(svc.meta)
        head = head_mask(svc.recommender.item_popularity)
        ds_ids = np.asarray(ds.item_ids.to_external(np.arange(ds.n_items)), dtype=object)
        records = []
        user_ids = ds.user_ids
        for s in range(0, len(examples), batch_size):
            chunk = examples[s: s + batch_size]
            reqs = [RecommendRequest(user_id=str(user_ids.to_external([e.user_idx])[0]),
                                     history=[str(x) for x in ds_ids[e.history]], n=n) for e in chunk]
            records += served_log_records(svc, reqs, arm=arm, ts=ts, head=head,
                                          request_ids=[f"ref-{s + j}" for j in range(len(chunk))])
    settings = serving_settings(meta, n=n, exclude_seen=exclude_seen, diversity=None)
    settings["splits"] = list(splits)
    settings["users"] = len(records)
    return records, settings


def build_reference_from_mar(mar: str | Path, dataset_dir: str | Path, out_dir: str | Path, **kw) -> Path:
    """reference_from_mar + build_reference (the catalogue = the MAR's items.parquet)."""
    records, settings = reference_from_mar(mar, dataset_dir, **kw)
    with tempfile.TemporaryDirectory(prefix="mirec-ref-items-") as tmp:
        mdir = _unpacked(mar, Path(tmp))
        items = pd.read_parquet(mdir / "items.parquet")
    return build_reference(records, out_dir, items, serving=settings)


# ---- writing and reading ---------------------------------------------------------------------------------------
def build_reference(served_records: Iterable[Any], out_dir: str | Path, item_meta: Any = None, *,
                    serving: dict | None = None) -> Path:
    """Write REF_DIR from ServedLog-like records (dicts or ServedLog) and the item table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_rec = 0
    models, versions, seen = set(), {}, {}
    with (out / "served.jsonl").open("w") as f:
        for i, r in enumerate(served_records):
            try:
                rec = ServedLog.model_validate(r.model_dump() if hasattr(r, "model_dump") else r)
            except ValidationError as exc:
                raise DataError(f"reference record {i} is not a ServedLog: {exc.errors()[0]['msg']}") from None
            f.write(rec.model_dump_json() + "\n")
            n_rec += 1
            models.add(rec.model)
            versions.setdefault(rec.model, set()).add(rec.version)
            if item_meta is None:
                for it in rec.items:
                    seen.setdefault(it.item_id, it.category)
    if not n_rec:
        raise DataError("no reference records: the reference needs the served lists of the known users")
    table = _item_table(item_meta)
    if table is None:  # catalogue unknown: the items seen in the reference stand in (coverage is then an upper bound)
        table = pd.DataFrame({"item_id": list(seen), "category": list(seen.values())})
    table.to_parquet(out / "items.parquet", index=False)
    summary = {"created": datetime.now(timezone.utc).isoformat(), "n_records": n_rec,
               "catalogue_size": int(len(table)), "catalogue_from_item_meta": item_meta is not None,
               "models": sorted(models), "versions": {m: sorted(v) for m, v in versions.items()},
               "serving": serving}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    ref = load_reference(out)
    summary["measures"] = {m: _jsonable(M.summarise(ref.model_frame(m))) for m in ref.models}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return out


def _jsonable(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in d.items()}


@dataclass
class ModelReference:
    path: Path
    items: pd.DataFrame
    summary: dict
    data: Any = None                       # LogData
    frames: dict = field(default_factory=dict)


@dataclass
class Reference:
    """One or several model references. `model_frame(model)` -> that model's Frame."""

    path: Path
    parts: list[ModelReference]

    @property
    def models(self) -> list[str]:
        return sorted({m for p in self.parts for m in p.summary.get("models", [])} |
                      {m for p in self.parts for m in (p.data.answers["model"].unique() if p.data is not None else [])})

    def part_of(self, model: str) -> ModelReference | None:
        for p in self.parts:
            if p.data is not None and (p.data.answers["model"] == model).any():
                return p
        return None

    @property
    def summary(self) -> dict:
        return self.parts[0].summary if len(self.parts) == 1 else {"parts": [p.summary for p in self.parts]}

    @property
    def catalogue_size(self) -> int:
        return int(len(self.parts[0].items))

    def serving_of(self, model: str) -> dict | None:
        p = self.part_of(model)
        s = (p.summary.get("serving") if p else None) or None
        return s if s and (s.get("model") in (None, model)) else s

    def versions_of(self, model: str) -> list[str]:
        p = self.part_of(model)
        if p is None:
            return []
        a = p.data.answers
        return sorted(a.loc[a["model"] == model, "version"].astype(str).unique())

    def full_frame(self, part: ModelReference, strong_share: float = 0.2, min_delivery_ratio: float = 0.25) -> M.Frame:
        key = ("all", strong_share, min_delivery_ratio)
        if key not in part.frames:
            part.frames[key] = M.build_frame(part.data, part.items, strong_share=strong_share,
                                             min_delivery_ratio=min_delivery_ratio)
        return part.frames[key]

    def model_frame(self, model: str | None, strong_share: float = 0.2, min_delivery_ratio: float = 0.25) -> M.Frame:
        """The reference answers of `model` (None: every answer of the first part)."""
        part = self.part_of(model) if model is not None else self.parts[0]
        if part is None:
            raise DataError(f"model {model!r} is not in the reference {self.path} (it holds {', '.join(self.models)})")
        full = self.full_frame(part, strong_share, min_delivery_ratio)
        if model is None:
            return full
        key = (model, strong_share, min_delivery_ratio)
        if key not in part.frames:
            mask = full.answers["model"].to_numpy() == model
            part.frames[key] = full if mask.all() else full.where(mask)
        return part.frames[key]

    def all_frame(self, strong_share: float = 0.2, min_delivery_ratio: float = 0.25) -> M.Frame:
        """Every answer of the reference (for --allow-model-mismatch): the first part's catalogue."""
        return self.full_frame(self.parts[0], strong_share, min_delivery_ratio)


def _load_part(p: Path) -> ModelReference:
    from mirec.monitoring.logs import read_window

    summary = json.loads((p / "summary.json").read_text()) if (p / "summary.json").is_file() else {}
    items = pd.read_parquet(p / "items.parquet")
    items["item_id"] = items["item_id"].astype(str)
    try:
        data, stats = read_window([p / "served.jsonl"], None, None, catalogue_ids=items["item_id"].to_numpy(),
                                   catalogue_categories=items["category"].to_numpy())
    except DataError as exc:
        raise DataError(f"{p / 'served.jsonl'}: {exc}") from None
    if stats["lines"] == 0:
        raise DataError(f"{p / 'served.jsonl'} holds no records")
    if stats["bad_lines"]:
        ex = stats["examples"][0]
        raise DataError(f"{p / 'served.jsonl'} line {ex['line'] or '?'} is not a ServedLog v1 record: {ex['detail']}")
    return ModelReference(p, items, summary, data)


def load_reference(ref_dir: str | Path) -> Reference:
    """REF_DIR with served.jsonl + items.parquet, or a folder of such per-model sub-folders."""
    p = Path(ref_dir)
    if (p / "served.jsonl").is_file() and (p / "items.parquet").is_file():
        return Reference(p, [_load_part(p)])
    subs = sorted(d for d in p.iterdir() if d.is_dir() and (d / "served.jsonl").is_file()) if p.is_dir() else []
    if not subs:
        missing = "served.jsonl" if not (p / "served.jsonl").is_file() else "items.parquet"
        raise DataError(f"not a monitoring reference: {p / missing} missing (and no sub-folder holds one; make one "
                        "with mirec.monitoring.reference.build_reference_from_mar)")
    for s in subs:
        if not (s / "items.parquet").is_file():
            raise DataError(f"not a monitoring reference: {s / 'items.parquet'} missing")
    return Reference(p, [_load_part(s) for s in subs])

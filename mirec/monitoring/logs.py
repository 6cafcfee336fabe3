"""Read the serving log (ServedLog JSONL) for one time window, vectorised (DuckDB), and parse `--since/--until`.

`read_window(pattern, start, end, catalogue)` -> (`LogData`, stats). DuckDB scans the JSONL files (plain or
.gz) line by line, checks every line in the window against the ServedLog v1 contract (JSON, readable `ts`,
every field a check needs present with the right type, a supported `schema_version`) and hands back
columns: one row per answer, one per served item, one per (answer, history category). No Python loop
runs per line or per item, and no Python object is made per record (memory: a few hundred bytes per
answer, `benchmarks/monitoring.py --timing`).

Files: a file, a folder (its *.jsonl / *.jsonl.gz), or a glob (`**` allowed). **Hourly layout**: a file
whose name or path carries its hour (`served-20260101T10.jsonl`, `served.jsonl.2026-01-01T10`,
`.../2026/01/01/10/served.jsonl`, `.../date=2026-01-01/hour=10/...`) holds that hour's lines; files whose
hour does not overlap the window are not opened (`stats["files_skipped"]`). Files without an hour in their
name are read whole and filtered by `ts`.

Bad lines (not JSON, no readable `ts`, a missing or mistyped required field, an unknown `schema_version`)
are counted per reason; their share of the window's lines feeds the `log_quality` check. A line without a
readable `ts` belongs to the window when its file's hour is the window's (hourly layout) or, in an
un-stamped append-only file, when the dated line before it is in the window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from mirec.errors import DataError

_DUR = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)")
_UNIT = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}

#: served-log schema versions this monitor reads (mirec.serving.schema.ServedLog.schema_version)
SUPPORTED_SCHEMA_VERSIONS = (1,)

#: fields every ServedLog v1 line must carry (a line without one, or with a mistyped one, is "wrong schema")
REQUIRED_FIELDS = ["schema_version", "ts", "request_id", "model", "version", "n", "history_len", "unknown_items",
                   "fallback", "items", "interest_stats", "history_categories"]

BAD_REASONS = ("not_json", "no_ts", "wrong_schema", "unknown_schema_version")
UNKNOWN_CATEGORY = "(unknown)"


# ---------------------------------------------------------------------------------------------- time
def parse_duration(text: str) -> timedelta | None:
    """'1h', '30m', '1h30m', '2d', '90s' -> timedelta; None when `text` is not a duration."""
    t = text.strip().lower()
    if not t or _DUR.sub("", t).strip():
        return None
    return timedelta(seconds=sum(float(n) * _UNIT[u] for n, u in _DUR.findall(t)))


def parse_time(text: str | datetime | None, now: datetime) -> datetime:
    """ISO-8601 (naive = UTC), 'now', or a duration meaning that long before `now`."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "now")):
        return now
    if isinstance(text, datetime):
        return text if text.tzinfo else text.replace(tzinfo=timezone.utc)
    d = parse_duration(text)
    if d is not None:
        return now - d
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise DataError(f"cannot read time {text!r}: use ISO-8601 (2026-01-01T10:00:00Z), 'now' or a duration (1h, 30m)") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def window_bounds(since: str | datetime, until: str | datetime | None = None, now: datetime | None = None
                  ) -> tuple[datetime, datetime]:
    """`--since 1h [--until T]` -> [start, end): a duration `since` counts back from `until` (default now)."""
    now = now or datetime.now(timezone.utc)
    end = parse_time(until, now)
    d = parse_duration(since) if isinstance(since, str) else None
    start = end - d if d is not None else parse_time(since, now)
    if start >= end:
        raise DataError(f"empty time window: start {start.isoformat()} is not before end {end.isoformat()}")
    return start, end


def window_name(start: datetime, end: datetime) -> str:
    f = "%Y%m%dT%H%M%SZ"
    return f"{start.astimezone(timezone.utc).strftime(f)}_{end.astimezone(timezone.utc).strftime(f)}"


# ---------------------------------------------------------------------------------------------- files
_NAME_HOUR = re.compile(r"(?<!\d)(20\d{2})-?(\d{2})-?(\d{2})[T_\-]?(\d{2})(?!\d)")
_DIR_HOUR = re.compile(r"(?:^|/)(20\d{2})/(\d{2})/(\d{2})/(\d{2})(?:/|$)")
_HIVE_HOUR = re.compile(r"(?:date|dt)=(20\d{2})-?(\d{2})-?(\d{2})/(?:hour|hr|h)=(\d{1,2})(?:/|$)")


def file_hour(path: str | Path) -> datetime | None:
    """The hour a log file holds (hourly layout), from its name or its folders; None when it carries none."""
    p = Path(path)
    for text, rx in ((p.name, _NAME_HOUR), (p.parent.as_posix(), _HIVE_HOUR), (p.parent.as_posix(), _DIR_HOUR)):
        m = rx.search(text)
        if m:
            try:
                return datetime(*(int(x) for x in m.groups()), tzinfo=timezone.utc)
            except ValueError:
                return None
    return None


def log_files(pattern: str | Path) -> list[Path]:
    """A file, a folder (its *.jsonl[.gz]), or a glob (`**` allowed)."""
    import glob

    p = Path(pattern)
    if p.is_dir():
        files = sorted([*p.glob("*.jsonl"), *p.glob("*.jsonl.*")])
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(str(pattern), recursive=True) if Path(f).is_file())
    if not files:
        raise DataError(f"no serving log found at {pattern!s} (a JSONL file, a folder of *.jsonl, or a glob)")
    return files


def files_for_window(files: list[Path], start: datetime | None, end: datetime | None) -> tuple[list[Path], list[Path]]:
    """-> (files to read, files skipped because their hour does not overlap [start, end))."""
    if start is None or end is None:
        return list(files), []
    keep, skip = [], []
    for f in files:
        h = file_hour(f)
        (skip if h is not None and (h + timedelta(hours=1) <= start or h >= end) else keep).append(f)
    return keep, skip


# ---------------------------------------------------------------------------------------------- data
@dataclass
class LogData:
    """Columns of the valid ServedLog answers of a window.

    answers: one row per answer (model, arm, version, ts_ms, n, diversity, history_len, unknown_items, fallback,
      history_source, k, mean_pairwise_cos, n_items, head_share, mean_log_pop, file, line);
    items (parallel arrays, grouped by answer in answer order): item_answer, item_id (codes: catalogue index, or
      >= catalogue_size for ids the catalogue lacks; `item_ids` names every code), item_category (codes into
      `categories`, -1 when the line carries none), item_interest, item_rank (1-based);
    history entries: hist_answer, hist_category (codes into `categories`), hist_count."""

    answers: pd.DataFrame
    item_answer: np.ndarray
    item_id: np.ndarray
    item_category: np.ndarray
    item_interest: np.ndarray
    item_rank: np.ndarray
    item_ids: np.ndarray
    hist_answer: np.ndarray
    hist_category: np.ndarray
    hist_count: np.ndarray
    categories: list[str]
    catalogue_size: int = 0
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.answers)


def _sql_str(s: str) -> str:
    return s.replace("'", "''")


#: the typed columns DuckDB's JSON reader parses each line into (a mistyped value -> NULL, garbage -> an all-NULL row)
COLUMNS = ("{'schema_version': 'INTEGER', 'ts': 'VARCHAR', 'request_id': 'VARCHAR', 'model': 'VARCHAR', "
           "'arm': 'VARCHAR', 'version': 'VARCHAR', 'n': 'INTEGER', 'diversity': 'DOUBLE', 'history_len': 'INTEGER', "
           "'unknown_items': 'INTEGER', 'fallback': 'VARCHAR', 'history_source': 'VARCHAR', "
           "'items': 'STRUCT(item_id VARCHAR, interest INTEGER, category VARCHAR)[]', "
           "'interest_stats': 'STRUCT(k INTEGER, mean_pairwise_cos DOUBLE)', "
           "'history_categories': 'MAP(VARCHAR, INTEGER)', "
           "'history_popularity': 'STRUCT(head_share DOUBLE, mean_log_pop DOUBLE)'}")


def _source(path: str) -> str:
    """Rows of one file in file order (one DuckDB thread keeps the order), numbered 1.. over non-empty lines."""
    return (f"(SELECT row_number() OVER () AS rn, *, TRY_CAST(ts AS TIMESTAMPTZ) AS tsz FROM read_json('{_sql_str(path)}', "
            f"columns={COLUMNS}, format='newline_delimited', ignore_errors=true, maximum_object_size=16777216))")


def _status_expr() -> str:
    sup = ", ".join(str(v) for v in SUPPORTED_SCHEMA_VERSIONS)
    required = " AND ".join(f"{c} IS NOT NULL" for c in ("request_id", "model", "version", "n", "history_len",
                                                          "unknown_items", "items", "interest_stats",
                                                          "history_categories"))
    items_ok = "coalesce(list_bool_and(list_transform(items, x -> x.item_id IS NOT NULL AND x.interest IS NOT NULL)), true)"
    nothing = " AND ".join(f"{c} IS NULL" for c in ("ts", "model", "items", "request_id", "schema_version",
                                                     "interest_stats", "history_categories", "version"))
    return f"""CASE WHEN {nothing} THEN 'not_json' WHEN tsz IS NULL THEN 'no_ts'
                    WHEN schema_version IS NOT NULL AND schema_version NOT IN ({sup}) THEN 'unknown_schema_version'
                    WHEN schema_version IS NULL OR NOT ({required}) OR NOT {items_ok} THEN 'wrong_schema'
                    ELSE 'ok' END"""


def explain_bad_line(text: str, reason: str) -> str:
    """A readable reason for one bad line (which field is missing or mistyped)."""
    import json

    if reason == "not_json":
        return "not a JSON object (truncated or garbage line)"
    try:
        raw = json.loads(text)
    except ValueError:
        return "not a JSON object (line longer than shown?)"
    if not isinstance(raw, dict):
        return f"a JSON {type(raw).__name__}, not an object"
    if reason == "no_ts":
        return "no readable 'ts' (ISO-8601 time)"
    if reason == "unknown_schema_version":
        return (f"schema_version {raw.get('schema_version')!r} is not supported by this monitor "
                f"(supports {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))})")
    missing = [f for f in REQUIRED_FIELDS if f not in raw]
    if missing:
        return f"required field(s) missing: {', '.join(missing)}"
    from pydantic import ValidationError

    from mirec.serving.schema import ServedLog

    try:
        ServedLog.model_validate(raw)
    except ValidationError as exc:
        e = exc.errors()[0]
        return f"field '{'.'.join(str(x) for x in e['loc'])}': {e['msg']}"
    return "a required field has the wrong type (items[].item_id/interest, interest_stats.k/mean_pairwise_cos, history_categories)"


ANSWER_FIELDS = ["model", "arm", "version", "n", "diversity", "history_len", "unknown_items", "fallback",
                 "history_source", "k", "mean_pairwise_cos", "n_items", "head_share", "mean_log_pop", "ts_ms", "line",
                 "file"]


def read_window(pattern: str | Path | list, start: datetime | None, end: datetime | None, *,
                catalogue_ids: np.ndarray | None = None, catalogue_categories: np.ndarray | None = None,
                threads: int = 1, max_examples: int = 3) -> tuple[LogData, dict]:
    """Valid ServedLog answers with start <= ts < end (all of them when start/end are None) and read statistics:
    lines (non-empty lines of the window), bad_lines, bad_by_reason, bad_share, examples (first bad lines with
    the reason), files, files_skipped.

    DuckDB's JSON reader parses each line into typed columns (COLUMNS); four streaming passes per file (line
    status counts, answers, items, history) return only compact columns: item ids become catalogue indices and
    categories codes inside DuckDB (ENUM types built from `catalogue_ids` / `catalogue_categories`, the catalogue's
    item_id and category per item_idx; without them, from the log itself). Raises DataError when the log is
    missing or no line of it is usable."""
    import duckdb

    all_files = [Path(f) for f in pattern] if isinstance(pattern, list) else log_files(pattern)
    files, skipped = files_for_window(all_files, start, end)
    windowed = start is not None and end is not None
    params = {"start": start, "end": end} if windowed else {}
    con = duckdb.connect(config={"threads": max(1, threads), "preserve_insertion_order": True})
    try:
        return _read(con, files, skipped, windowed, params, catalogue_ids, catalogue_categories, max_examples)
    finally:
        con.close()


def _read(con, files, skipped, windowed, params, catalogue_ids, catalogue_categories, max_examples):
    import pyarrow as pa

    status = _status_expr()
    inwin = "(tsz >= $start AND tsz < $end)" if windowed else "(tsz IS NOT NULL)"
    if catalogue_ids is None:  # catalogue from the log itself (a reference without item table)
        ids = set()
        for f in files:
            ids |= {r[0] for r in con.execute(f"SELECT DISTINCT unnest(items).item_id FROM {_source(str(f))}").fetchall()
                    if r[0] is not None}
        catalogue_ids = np.array(sorted(ids), dtype=object)
    catalogue_ids = np.asarray(catalogue_ids, dtype=object).astype(str)
    cats = _Codes(sorted({str(c) for c in catalogue_categories if c is not None})
                  if catalogue_categories is not None else [])
    con.register("mirec_items", pa.table({"item_id": pa.array(catalogue_ids, pa.string())}))
    con.execute("CREATE TYPE item_enum AS ENUM (SELECT item_id FROM mirec_items)")
    con.register("mirec_cats", pa.table({"c": pa.array(cats.names or ["(none)"], pa.string())}))
    con.execute("CREATE TYPE cat_enum AS ENUM (SELECT c FROM mirec_cats)")
    size = len(catalogue_ids)
    item_codes = _ItemCodes(size)
    bad_counts = {r: 0 for r in BAD_REASONS}
    examples: list[dict] = []
    cols: dict[str, list] = {k: [] for k in ("answers", "ia", "iid", "icat", "iint", "irank", "ha", "hcat", "hcnt")}
    n_ans = 0
    for fi, f in enumerate(files):
        src = _source(str(f))
        hour = file_hour(f)
        # undated lines (garbage, no readable ts) belong to this window when the file's hour is the window's, or
        # (un-stamped append-only file) when the dated line before them is in the window
        if not windowed:
            undated_in = "true"
        elif hour is not None:
            undated_in = "true" if (hour < params["end"] and hour + timedelta(hours=1) > params["start"]) else "false"
        else:
            undated_in = "(rn > b.lo AND rn < b.hi)"
        # an undated line takes the time of the dated line before it: it belongs to the window when it lies after
        # the window's first line and before the first line past the window's end
        bounds = ("(SELECT coalesce(min(rn) FILTER (WHERE tsz >= $start AND tsz < $end), 9e18) AS lo, "
                  "coalesce(min(rn) FILTER (WHERE tsz >= $end), 9e18) AS hi FROM s)" if windowed else "(SELECT 0 AS lo, 0 AS hi)")
        q = f"""WITH s AS (SELECT rn, tsz, {status} AS st FROM {src}), b AS {bounds}
                SELECT st, count(*), list(rn ORDER BY rn)[1:{max_examples}] FROM s, b
                WHERE (tsz IS NOT NULL AND {inwin}) OR (tsz IS NULL AND {undated_in}) GROUP BY st"""
        bad_rns: list[tuple[int, str]] = []
        for st, cnt, rns in con.execute(q, params).fetchall():
            if st != "ok":
                bad_counts[st] += int(cnt)
                bad_rns += [(int(r), st) for r in rns]
        if bad_rns and len(examples) < max_examples:
            examples += _examples(con, f, sorted(bad_rns)[: max_examples - len(examples)])
        good = f"{src} WHERE {inwin} AND {status} = 'ok'"
        ans = _arrow(con.execute(f"""
            SELECT rn AS line, epoch_ms(tsz) AS ts_ms, model, arm, version, n, diversity, history_len, unknown_items,
                   fallback IS NOT NULL AS fallback, history_source, interest_stats.k AS k,
                   interest_stats.mean_pairwise_cos AS mean_pairwise_cos, len(items) AS n_items,
                   history_popularity.head_share AS head_share, history_popularity.mean_log_pop AS mean_log_pop
            FROM {good}""", params))
        A = ans.num_rows
        if A == 0:
            continue
        adf = ans.to_pandas()
        adf["file"] = fi
        cols["answers"].append(adf)
        items = _arrow(con.execute(f"""
            WITH g AS (SELECT (row_number() OVER () - 1)::INTEGER AS a, items FROM {good}),
                 u AS (SELECT a, unnest(range(1, len(items) + 1))::SMALLINT AS rank, unnest(items) AS it FROM g)
            SELECT a, rank, coalesce(enum_code(TRY_CAST(it.item_id AS item_enum))::INTEGER, -1) AS code,
                   coalesce(it.interest, -1)::SMALLINT AS interest FROM u""", params))
        code = _np(items.column("code"), np.int32)
        ia = _np(items.column("a"), np.int32)
        cols["irank"].append(_np(items.column("rank"), np.int16))
        cols["iint"].append(_np(items.column("interest"), np.int16))
        del items
        # the catalogue's category by code; the logged one only for items the catalogue lacks
        icat = np.full(len(code), -2, np.int32)
        miss = code < 0
        if miss.any():
            unk = _arrow(con.execute(f"""
                WITH g AS (SELECT items FROM {good}), u AS (SELECT unnest(items) AS it FROM g)
                SELECT CASE WHEN TRY_CAST(it.item_id AS item_enum) IS NULL THEN it.item_id END AS id,
                       CASE WHEN TRY_CAST(it.item_id AS item_enum) IS NULL THEN it.category END AS cat FROM u""", params))
            m = pa.array(miss)
            code[miss] = size + item_codes.encode(unk.column("id").filter(m))
            icat[miss] = cats.encode(unk.column("cat").filter(m))
            del unk
        ia += np.int32(n_ans)
        cols["ia"].append(ia)
        cols["iid"].append(code)
        cols["icat"].append(icat)
        hist = _arrow(con.execute(f"""
            WITH g AS (SELECT (row_number() OVER () - 1)::INTEGER AS a, history_categories AS h FROM {good}),
                 u AS (SELECT a, unnest(map_keys(h)) AS k, unnest(map_values(h)) AS v FROM g)
            SELECT a, coalesce(enum_code(TRY_CAST(k AS cat_enum))::INTEGER, -1) AS code,
                   coalesce(v, 0)::INTEGER AS cnt FROM u""", params))
        hcode = _np(hist.column("code"), np.int32)
        hm = hcode < 0
        if hm.any():
            unk = _arrow(con.execute(f"""
                WITH g AS (SELECT history_categories AS h FROM {good}), u AS (SELECT unnest(map_keys(h)) AS k FROM g)
                SELECT CASE WHEN TRY_CAST(k AS cat_enum) IS NULL THEN k END AS k FROM u""", params))
            hcode[hm] = cats.encode(unk.column("k").filter(pa.array(hm)))
        ha = _np(hist.column("a"), np.int32)
        ha += np.int32(n_ans)
        cols["ha"].append(ha)
        cols["hcat"].append(hcode)
        cols["hcnt"].append(_np(hist.column("cnt"), np.int32))
        del hist
        n_ans += A
    data = _assemble(cols, cats, item_codes, catalogue_ids, catalogue_categories)
    good_n = len(data)
    bad = sum(bad_counts.values())
    lines = good_n + bad
    stats = {"files": [str(f) for f in files], "files_skipped": len(skipped), "lines": lines, "in_window": good_n,
             "bad_lines": bad, "bad_by_reason": {k: v for k, v in bad_counts.items() if v},
             "bad_share": round(bad / lines, 6) if lines else 0.0, "examples": examples}
    if lines and not good_n:
        why = "; ".join(f"{e['reason']}: {e['detail']}" for e in examples[:2])
        raise DataError(f"no line of the serving log in the window is a usable ServedLog v1 record "
                        f"({bad} bad lines: {why})")
    return data, stats


def _examples(con, f: Path, rns: list[tuple[int, str]]) -> list[dict]:
    """The text of a few bad lines (n-th non-empty line of the file) with a readable reason."""
    want = {rn: st for rn, st in rns}
    rows = con.execute(
        f"""SELECT rn, line FROM (SELECT row_number() OVER () AS rn, line FROM read_csv('{_sql_str(str(f))}',
                columns={{'line': 'VARCHAR'}}, header=false, delim=E'\\x1f', quote='', escape='', auto_detect=false,
                strict_mode=false, null_padding=true, parallel=false) WHERE line IS NOT NULL AND trim(line) <> '')
            WHERE rn IN ({', '.join(str(r) for r in want)})""").fetchall()
    text = {int(r): line for r, line in rows}
    return [{"file": str(f), "line": rn, "reason": st, "detail": explain_bad_line(text.get(rn) or "", st),
             "text": (text.get(rn) or "")[:160]} for rn, st in rns]


def _arrow(result):
    """DuckDB result -> pyarrow.Table (`.arrow()` gives a RecordBatchReader in DuckDB >= 1.4)."""
    out = result.arrow()
    return out.read_all() if hasattr(out, "read_all") else out


class _Codes:
    """Growing string -> int code table, fed with arrow string arrays (a dictionary lookup per distinct value)."""

    def __init__(self, initial: list[str] | None = None):
        self.names: list[str] = list(initial or [])
        self.pos = {v: i for i, v in enumerate(self.names)}

    def encode(self, arr) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        if len(arr) == 0:
            return np.zeros(0, np.int32)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        enc = pc.dictionary_encode(arr.cast(pa.string()))
        lut = np.empty(len(enc.dictionary) + 1, np.int32)
        for j, v in enumerate(enc.dictionary.to_pylist()):
            if v not in self.pos:
                self.pos[v] = len(self.names)
                self.names.append(v)
            lut[j] = self.pos[v]
        lut[-1] = -1
        idx = np.asarray(pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False), np.int64)
        return lut[idx]


class _ItemCodes(_Codes):
    """Codes of item ids the catalogue lacks (they come after the catalogue's `size` items)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size


def _np(arr, dtype, fill=None):
    """arrow (chunked) array -> a writable numpy array of `dtype` (one copy)."""
    import pyarrow.compute as pc

    if fill is not None:
        arr = pc.fill_null(arr, fill)
    out = arr.to_numpy() if hasattr(arr, "to_numpy") else arr
    out = np.asarray(out)
    return out.astype(dtype, copy=not out.flags.writeable or out.dtype != dtype)


def _assemble(cols: dict, cats: _Codes, item_codes: _ItemCodes, catalogue_ids, catalogue_categories) -> LogData:
    def cat(key, dtype):
        if not cols[key]:
            return np.zeros(0, dtype)
        out = cols[key][0] if len(cols[key]) == 1 else np.concatenate(cols[key])
        cols[key] = []
        return out.astype(dtype, copy=False)

    answers = (pd.concat(cols["answers"], ignore_index=True) if cols["answers"] else
               pd.DataFrame({c: pd.Series(dtype=float) for c in ANSWER_FIELDS}))
    iid = cat("iid", np.int32)
    icat = cat("icat", np.int32)
    size = item_codes.size
    # items the catalogue knows: the catalogue's category
    known = icat == -2
    if known.any():
        if catalogue_categories is not None:
            names = np.asarray(catalogue_categories, dtype=object)
            lut = np.array([cats.pos.get(str(c), -1) if c is not None else -1 for c in names] + [-1], np.int32)
            icat[known] = lut[np.minimum(iid[known], len(names))]
        else:
            icat[known] = -1
    ids = np.concatenate([np.asarray(catalogue_ids, dtype=object), np.asarray(item_codes.names, dtype=object)])
    return LogData(answers=answers, item_answer=cat("ia", np.int32), item_id=iid, item_category=icat,
                   item_interest=cat("iint", np.int16), item_rank=cat("irank", np.int16), item_ids=ids,
                   hist_answer=cat("ha", np.int32), hist_category=cat("hcat", np.int32),
                   hist_count=cat("hcnt", np.int32), categories=list(cats.names), catalogue_size=size)


def read_jsonl(path: str | Path) -> list[dict]:
    import json

    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]

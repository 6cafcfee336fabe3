"""Reading the served log and the feedback log into tables (pyarrow, fast path) with bad lines counted.

Both logs are JSON lines (`mirec.serving.schema.ServedLog`, `FeedbackLog`). A path may be a file, a folder (every
`*.jsonl*` in it, rotated files included) or a glob. A line that does not parse or lacks a required field is not
used and is counted per file (`LogRead.bad_lines`, shown in the report): nothing is dropped silently.
"""

from __future__ import annotations

import glob as globmod
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.json as pajson

from mirec.errors import DataError

SERVED_COLUMNS = ("ts", "request_id", "user_id", "arm", "model", "version", "fallback", "latency_ms", "items")
FEEDBACK_COLUMNS = ("ts", "request_id", "user_id", "item_id", "type", "value", "assigned_arm")
ITEM_FIELDS = ("item_id", "interest", "category")

TS = pa.timestamp("us", tz="UTC")  # Arrow's JSON reader parses ISO-8601 with "Z" / "+hh:mm" itself

_SERVED_SCHEMA = pa.schema([
    ("ts", TS), ("request_id", pa.string()), ("user_id", pa.string()), ("arm", pa.string()),
    ("model", pa.string()), ("version", pa.string()), ("fallback", pa.string()), ("latency_ms", pa.float64()),
    ("items", pa.list_(pa.struct([("item_id", pa.string()), ("interest", pa.int64()), ("category", pa.string())]))),
])
_FEEDBACK_SCHEMA = pa.schema([
    ("ts", TS), ("request_id", pa.string()), ("user_id", pa.string()), ("item_id", pa.string()),
    ("type", pa.string()), ("value", pa.float64()), ("assigned_arm", pa.string()),
])


#: the rotated files of a log <path> (mirec.serving.logwriter): <path>.<YYYY-MM-DDTHH>[.n] (hourly) or
#: <path>.<YYYYmmddTHHMMSS.ffffffZ>[-n] (single layout)
_ROTATED = re.compile(r"^\.(\d{4}-\d{2}-\d{2}T\d{2}(\.\d+)?|\d{8}T\d{6}\.\d{6}Z(-\d+)?)$")


def rotated_files(base: Path) -> list[Path]:
    """The files the API's log writer rotated `base` into (every hour's file of an hourly log), sorted."""
    if not base.parent.is_dir():
        return []
    return sorted(x for x in base.parent.glob(globmod.escape(base.name) + ".*")
                  if x.is_file() and _ROTATED.match(x.name[len(base.name):]))


def expand_paths(spec: str | Path | list) -> list[Path]:
    """A file, a folder (its *.jsonl*), a glob, or a list of those -> the files, sorted; DataError if none.
    A log's own path (`logs/feedback.jsonl`) means the whole log: the file and every file it was rotated into
    (`feedback.jsonl.2026-01-01T10`, ...: the hourly layout), also when the current file does not exist."""
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    out: list[Path] = []
    for s in specs:
        p = Path(s)
        if p.is_dir():
            out += sorted(x for x in p.glob("*.jsonl*") if x.is_file())
        elif p.is_file() or rotated_files(p):
            out += ([p] if p.is_file() else []) + rotated_files(p)
        else:
            out += sorted(Path(x) for x in globmod.glob(str(s)) if Path(x).is_file())
    if not out:
        raise DataError(f"no log files found at {spec}")
    return sorted(dict.fromkeys(out))


@dataclass
class LogRead:
    table: pd.DataFrame  # every column but the served log's `items`
    files: list[str]
    lines: int = 0
    bad_lines: int = 0
    bad_examples: list[str] = field(default_factory=list)
    #: the served log's items, row-aligned with `table` (kept in Arrow: millions of small dicts in pandas are slow)
    items: pa.ListArray | None = None
    arrow: pa.Table | None = None  # `table` as Arrow (fast hash lookups)


def _read_fast(path: Path, schema: pa.Schema) -> pa.Table:
    opts = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    return pajson.read_json(path, read_options=pajson.ReadOptions(block_size=1 << 24), parse_options=opts)


def _read_slow(path: Path, schema: pa.Schema, required: tuple[str, ...], read: LogRead) -> pa.Table:
    """Line by line: what the fast reader refused (a malformed line fails a whole block there)."""
    names = schema.names
    text_schema = pa.schema([pa.field("ts", pa.string()) if f.name == "ts" else f for f in schema])
    rows = []
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = orjson.loads(line)
                if not isinstance(rec, dict) or any(rec.get(k) in (None, "") for k in required):
                    raise ValueError(f"missing one of {required}")
                rows.append({k: rec.get(k) for k in names})
            except Exception as exc:  # noqa: BLE001 - counted and shown, never silently dropped
                read.bad_lines += 1
                if len(read.bad_examples) < 5:
                    read.bad_examples.append(f"{path.name}:{n}: {type(exc).__name__}: {str(exc)[:120]}")
    def convert(batch: list[dict]) -> pa.Table:
        t = pa.Table.from_pylist(batch, schema=text_schema)
        return t.set_column(0, "ts", t["ts"].cast(TS)) if names[0] == "ts" else t

    try:
        return convert(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):  # a bad field: row by row
        good = []
        for r in rows:
            try:
                good.append(convert([r]))
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                read.bad_lines += 1
                if len(read.bad_examples) < 5:
                    read.bad_examples.append(f"{path.name}: wrong field type: {str(exc)[:120]}")
        return pa.concat_tables(good) if good else schema.empty_table()


def _read_log(spec, schema: pa.Schema, required: tuple[str, ...]) -> LogRead:
    files = expand_paths(spec)
    read = LogRead(table=pd.DataFrame(), files=[str(f) for f in files])
    tables = []
    for f in files:
        if f.stat().st_size == 0:
            continue
        try:
            t = _read_fast(f, schema)
            bad = np.zeros(t.num_rows, dtype=bool)
            for k in required:
                col = t[k]
                bad |= col.is_null().to_numpy(zero_copy_only=False)
            if bad.any():
                read.bad_lines += int(bad.sum())
                read.bad_examples.append(f"{f.name}: {int(bad.sum())} line(s) without one of {required}")
                t = t.filter(pa.array(~bad))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            t = _read_slow(f, schema, required, read)
        tables.append(t)
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    read.lines = table.num_rows + read.bad_lines
    items = None
    if "items" in table.column_names:
        items = table["items"].combine_chunks()
        table = table.drop_columns(["items"])
    read.arrow = table
    read.table = table.to_pandas()
    read.items = items
    return read


def read_served(spec) -> LogRead:
    """The served log: one row per answered request; `items` stays a list of {item_id, interest, category}."""
    return _read_log(spec, _SERVED_SCHEMA, ("ts", "request_id", "arm"))


def read_feedback(spec) -> LogRead:
    """The feedback log: one row per event."""
    return _read_log(spec, _FEEDBACK_SCHEMA, ("ts", "user_id", "item_id", "type"))


def explode_items(items: pa.ListArray) -> dict:
    """One entry per (served answer, position): row (the answer's row in the served table), position (0-based),
    and, as Arrow arrays, item_id, interest, category."""
    lengths = items.value_lengths().fill_null(0).to_numpy()
    flat = items.flatten()
    rows = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return {"row": rows, "position": (np.arange(int(lengths.sum())) - starts).astype(np.int32),
            "item_id": flat.field("item_id"), "interest": flat.field("interest"), "category": flat.field("category")}

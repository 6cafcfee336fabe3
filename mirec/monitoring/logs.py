"""Read the serving log (ServedLog JSONL) for one time window; parse `--since/--until`."""

from __future__ import annotations

import glob
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pydantic import ValidationError

from mirec.errors import DataError
from mirec.serving.schema import ServedLog

_DUR = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)")
_UNIT = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


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


def log_files(pattern: str | Path) -> list[Path]:
    """A file, a folder (its *.jsonl), or a glob (`**` allowed)."""
    p = Path(pattern)
    if p.is_dir():
        files = sorted(p.glob("*.jsonl"))
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(str(pattern), recursive=True) if Path(f).is_file())
    if not files:
        raise DataError(f"no serving log found at {pattern!s} (a JSONL file, a folder of *.jsonl, or a glob)")
    return files


def read_window(pattern: str | Path, start: datetime, end: datetime) -> tuple[list[dict], dict]:
    """Valid ServedLog records with start <= ts < end (as JSON-mode dicts), and read statistics.

    Bad lines (not JSON, no readable `ts`, or in the window but not a ServedLog) are counted and skipped;
    a log in which every line is bad is bad input (DataError). Lines outside the window are not validated."""
    files = log_files(pattern)
    stats = {"files": [str(f) for f in files], "lines": 0, "bad_lines": 0, "in_window": 0, "first_error": None}
    out: list[dict] = []
    for f in files:
        with open(f, "rb") as fh:
            for line in fh:
                if not line.strip():
                    continue
                stats["lines"] += 1
                try:  # cheap time filter first: only lines inside the window are fully validated
                    raw = json.loads(line)
                    ts = datetime.fromisoformat(str(raw["ts"]).replace("Z", "+00:00"))
                    ts = ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
                    if not (start <= ts < end):
                        continue
                    rec = ServedLog.model_validate(raw)
                except (ValidationError, ValueError, KeyError, TypeError) as exc:
                    stats["bad_lines"] += 1
                    if stats["first_error"] is None:
                        stats["first_error"] = f"{f}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    continue
                out.append(rec.model_dump(mode="json"))
    stats["in_window"] = len(out)
    if stats["lines"] and stats["bad_lines"] == stats["lines"]:
        raise DataError(f"no line of the serving log is a ServedLog record ({stats['first_error']})")
    return out, stats


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]

"""Writes the API's JSON-lines logs: the served log (one `ServedLog` line per answered request, what monitoring
and the A/B report read) and the feedback log (one `FeedbackLog` line per event, mirec.serving.feedback). Both
are a `JsonLinesLog` with the same layout, rotation and retention; each line is filed by its own `ts`.

Layout, rotation and retention (`ApiSettings.log_rotation`, `LogRotation`):
- **hourly** (the default): the current hour's lines go to `<path>`; at the first line of a later UTC hour the
  file is rotated to `<path>.<its hour>` (e.g. `served.jsonl.2026-01-01T10`), so every rotated file holds one
  hour, named by it, and the monitor opens only the files of its window (`mirec.monitoring.logs.file_hour`).
  A line is filed by the hour of its own `ts`: one whose answer was made just before the hour turned but
  written after the rotation is appended to its hour's file, not to the next hour's. Above `max_bytes` within
  an hour the file is rotated to `<path>.<hour>.<n>`. Rotated files older than `retention_hours` are deleted.
- **single** (`hourly: false`): rotated when the next line would pass `max_bytes` or the file is `every_s` old,
  to `<path>.<UTC time of rotation>` (e.g. `served.jsonl.20260101T120000.123456Z`: no hour the monitor would
  trust, so those files are read whole and filtered by `ts`).
In both, only the newest `backup_count` rotated files are kept when it is > 0. Built on
`logging.handlers.BaseRotatingHandler` (its lock, its rollover hooks).

The served-log writer never fails the request it logs: a record that cannot be encoded as UTF-8 (a lone surrogate such as
"\\ud800" is valid JSON in a request but not encodable) is written with those characters escaped ("\\\\ud800"),
and a write that fails (disk full, ...) is logged and counted (`errors`), not raised. The feedback writer raises
instead (the API answers 503 and the client retries: a lost outcome would bias the test).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from mirec.serving.schema import ServedLog

log = logging.getLogger(__name__)


HOUR_FORMAT = "%Y-%m-%dT%H"


def utc_hour(t: datetime | float) -> datetime:
    """The UTC hour a time falls in (naive datetimes are taken as UTC)."""
    if not isinstance(t, datetime):
        t = datetime.fromtimestamp(t, timezone.utc)
    elif t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def _line_hours(path: str) -> tuple[datetime | None, datetime | None]:
    """UTC hours of a log file's first and last lines (None where unreadable)."""
    def hour(line: bytes) -> datetime | None:
        try:
            return utc_hour(datetime.fromisoformat(json.loads(line)["ts"]))
        except (ValueError, KeyError, TypeError):
            return None

    try:
        with open(path, "rb") as fh:
            first = fh.readline()
            fh.seek(max(0, os.path.getsize(path) - 65536))
            tail = fh.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    except OSError:
        return None, None
    return hour(first), hour(tail)


class SizeAndTimeRotatingHandler(logging.handlers.BaseRotatingHandler):
    """Rotate by size and by hour (`hourly`) or age (`every_s`); keep the newest `backup_count` rotated files
    (0 = keep all) and, hourly, none older than `retention_hours` (0 = keep all). See the module doc.
    Hourly, a record may carry `hour` (its line's UTC hour; else the hour of writing)."""

    def __init__(self, filename: str | Path, max_bytes: int = 0, every_s: int = 0, backup_count: int = 0,
                 hourly: bool = False, retention_hours: int = 0):
        super().__init__(str(filename), mode="a", encoding="utf-8", delay=False)
        self.max_bytes = max_bytes
        self.every_s = every_s
        self.backup_count = backup_count
        self.hourly = hourly
        self.retention_hours = retention_hours
        self.setFormatter(logging.Formatter("%(message)s"))
        self.terminator = "\n"
        try:
            size = os.path.getsize(self.baseFilename)
            born = os.stat(self.baseFilename).st_mtime if size else time.time()
        except OSError:
            size, born = 0, time.time()
        self.rollover_at = born + every_s if every_s and not hourly else float("inf")
        #: the hour the current file's lines belong to (hourly; None while the file is empty)
        self.hour: datetime | None = None
        if hourly and size:
            first, last = _line_hours(self.baseFilename)
            if first is not None and first == last:
                self.hour = first  # a file of one hour (this writer's, before a restart): carry on with it
            else:  # lines of several hours (or unreadable): a name without an hour, read whole by the monitor
                self._rotate_to(self._stamped_name())

    # ---- hourly layout --------------------------------------------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        if not self.hourly:
            return super().emit(record)
        hour = getattr(record, "hour", None) or utc_hour(time.time())
        if self.stream is None:
            self.stream = self._open()
        if self.hour is None:
            self.hour = hour
        if hour < self.hour:  # made just before the hour turned, written after the rotation: its own hour's file
            with open(self._hour_name(hour), "a", encoding="utf-8") as fh:
                fh.write(self.format(record) + self.terminator)
            return
        if hour > self.hour:
            if self.stream.tell() > 0:
                self._rotate_to(self._free_name(self.hour))
            self.hour = hour
        elif self.max_bytes and self._over_size(record):
            self._rotate_to(self._free_name(self.hour))
        logging.FileHandler.emit(self, record)

    def _hour_name(self, hour: datetime) -> str:
        return f"{self.baseFilename}.{hour.strftime(HOUR_FORMAT)}"

    def _free_name(self, hour: datetime) -> str:
        dest, n = self._hour_name(hour), 1
        while os.path.exists(dest):
            dest, n = f"{self._hour_name(hour)}.{n}", n + 1
        return dest

    def _stamped_name(self) -> str:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        dest, n = f"{self.baseFilename}.{stamp}", 1
        while os.path.exists(dest):
            dest, n = f"{self.baseFilename}.{stamp}-{n}", n + 1
        return dest

    def _rotate_to(self, dest: str) -> None:
        if self.stream:
            self.stream.close()
            self.stream = None
        if os.path.exists(self.baseFilename):
            self.rotate(self.baseFilename, dest)
        self._apply_retention()
        self.stream = self._open()

    def _over_size(self, record: logging.LogRecord) -> bool:
        pos = self.stream.tell()
        chars = len(record.msg) + 1
        if pos == 0 or pos + 4 * chars <= self.max_bytes:  # fits even if every character took 4 bytes
            return False
        return pos + len(record.msg.encode("utf-8")) + 1 > self.max_bytes

    def _apply_retention(self) -> None:
        old = self.rotated_files()
        doomed = old[: max(0, len(old) - self.backup_count)] if self.backup_count else []
        if self.hourly and self.retention_hours:
            oldest = utc_hour(time.time()) - timedelta(hours=self.retention_hours)
            for p in old:
                try:
                    hour = datetime.strptime(p.name[len(Path(self.baseFilename).name) + 1:][:13], HOUR_FORMAT)
                except ValueError:  # a stamped (single-layout) name: kept unless backup_count says otherwise
                    continue
                if hour.replace(tzinfo=timezone.utc) < oldest:
                    doomed.append(p)
        for p in dict.fromkeys(doomed):
            try:
                p.unlink()
            except OSError as exc:
                log.warning("cannot delete the rotated log file %s: %s", p, exc)

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if self.stream is None:
            self.stream = self._open()
        if time.time() >= self.rollover_at:
            return self.stream.tell() > 0
        return bool(self.max_bytes) and self._over_size(record)

    def rotated_files(self) -> list[Path]:
        base = Path(self.baseFilename)
        return sorted(p for p in base.parent.glob(base.name + ".*") if p.is_file())

    def doRollover(self) -> None:  # single layout (BaseRotatingHandler.emit calls it when shouldRollover says so)
        self._rotate_to(self._stamped_name())
        self.rollover_at = time.time() + self.every_s if self.every_s else float("inf")

    def handleError(self, record: logging.LogRecord) -> None:  # the writer counts and reports it instead
        raise


def encode_record(record: ServedLog) -> str:
    """The record as one JSON line; strings that UTF-8 cannot hold (lone surrogates) escaped as \\uXXXX text."""
    try:
        return record.model_dump_json()
    except Exception:  # noqa: BLE001 - PydanticSerializationError from a surrogate: escape and retry
        data = _escape(record.model_dump(mode="json"))
        return ServedLog.model_validate(data).model_dump_json()


def _escape(v):
    if isinstance(v, str):
        return v.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(v, dict):
        return {_escape(k): _escape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_escape(x) for x in v]
    return v


class JsonLinesLog:
    """Append-only JSON-lines log, safe across threads; each line is flushed when written and filed by the hour
    of its own time (hourly layout); rotated by size/hour or age with retention (see the module doc). `append`
    raises when a line cannot be written. None as the path: nothing is written."""

    channel = "mirec.log"

    def __init__(self, path: str | Path | None, max_bytes: int = 0, every_s: int = 0, backup_count: int = 0,
                 hourly: bool = False, retention_hours: int = 0):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._handler: SizeAndTimeRotatingHandler | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handler = SizeAndTimeRotatingHandler(self.path, max_bytes, every_s, backup_count, hourly,
                                                       retention_hours)

    @classmethod
    def from_settings(cls, settings, path: str | Path | None = None):
        """The writer of `path` (default: the served log, `settings.log_path`) with the API's `log_rotation`."""
        r = settings.log_rotation
        return cls(path if path is not None else settings.log_path, max_bytes=r.max_bytes, every_s=r.every_s,
                   backup_count=r.backup_count, hourly=r.hourly, retention_hours=r.retention_hours)

    def append(self, lines: list[tuple[str, datetime]]) -> None:
        """Write (JSON line, its time) pairs in order; each goes to the file of its time's UTC hour (hourly)."""
        if self._handler is None:
            return
        with self._lock:
            for line, ts in lines:
                rec = logging.LogRecord(self.channel, logging.INFO, __file__, 0, line, None, None)
                rec.hour = utc_hour(ts)
                self._handler.handle(rec)

    def close(self) -> None:
        with self._lock:
            if self._handler is not None:
                self._handler.close()
                self._handler = None


class ServedLogWriter(JsonLinesLog):
    """The served log: `write` never raises (see the module doc)."""

    channel = "mirec.served"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.errors = 0

    def write(self, record: ServedLog) -> bool:
        """Write one line; False (logged, counted in `errors`) if it could not be written. Never raises."""
        if self._handler is None:
            return True
        try:
            self.append([(encode_record(record), record.ts)])  # hourly: the line goes to its own hour's file
            return True
        except Exception as exc:  # noqa: BLE001 - the answer exists: never fail the request over its log line
            self.errors += 1
            log.error("served-log line for request %r not written: %s: %s", getattr(record, "request_id", "?"),
                      type(exc).__name__, exc)
            return False


def read_served_log(path: str | Path) -> list[ServedLog]:
    """Parse a served-log file back into records (used by tests and monitoring)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(ServedLog.model_validate_json(line))
    return out

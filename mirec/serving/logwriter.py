"""Writes the served log: one `ServedLog` JSON line per answered request (what monitoring reads).

Rotation and retention (`ApiSettings.log_rotation`, `LogRotation`): the file is rotated when the next line would
make it larger than `max_bytes` or when it is `every_s` seconds old, to `<path>.<UTC time of rotation>` (e.g.
`served.jsonl.20260101T120000.123456Z`; monitoring reads `served.jsonl*`), and only the newest `backup_count`
rotated files are kept. Built on `logging.handlers.BaseRotatingHandler` (its lock, its rollover hooks).

The writer never fails the request it logs: a record that cannot be encoded as UTF-8 (a lone surrogate such as
"\\ud800" is valid JSON in a request but not encodable) is written with those characters escaped ("\\\\ud800"),
and a write that fails (disk full, ...) is logged and counted (`errors`), not raised.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from mirec.serving.schema import ServedLog

log = logging.getLogger(__name__)


class SizeAndTimeRotatingHandler(logging.handlers.BaseRotatingHandler):
    """Rotate by size and/or age; keep the newest `backup_count` rotated files (0 = keep all)."""

    def __init__(self, filename: str | Path, max_bytes: int = 0, every_s: int = 0, backup_count: int = 0):
        super().__init__(str(filename), mode="a", encoding="utf-8", delay=False)
        self.max_bytes = max_bytes
        self.every_s = every_s
        self.backup_count = backup_count
        self.setFormatter(logging.Formatter("%(message)s"))
        self.terminator = "\n"
        try:
            born = os.stat(self.baseFilename).st_mtime if os.path.getsize(self.baseFilename) else time.time()
        except OSError:
            born = time.time()
        self.rollover_at = born + every_s if every_s else float("inf")

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if self.stream is None:
            self.stream = self._open()
        if time.time() >= self.rollover_at:
            return self.stream.tell() > 0
        if self.max_bytes:
            pos = self.stream.tell()
            chars = len(record.msg) + 1
            if pos == 0 or pos + 4 * chars <= self.max_bytes:  # fits even if every character took 4 bytes
                return False
            return pos + len(record.msg.encode("utf-8")) + 1 > self.max_bytes
        return False

    def rotated_files(self) -> list[Path]:
        base = Path(self.baseFilename)
        return sorted(p for p in base.parent.glob(base.name + ".*") if p.is_file())

    def doRollover(self) -> None:
        if self.stream:
            self.stream.close()
            self.stream = None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        dest = self.rotation_filename(f"{self.baseFilename}.{stamp}")
        n = 1
        while os.path.exists(dest):
            dest = self.rotation_filename(f"{self.baseFilename}.{stamp}-{n}")
            n += 1
        if os.path.exists(self.baseFilename):
            self.rotate(self.baseFilename, dest)
        if self.backup_count:
            old = self.rotated_files()
            for p in old[: max(0, len(old) - self.backup_count)]:
                try:
                    p.unlink()
                except OSError as exc:
                    log.warning("cannot delete the rotated served log %s: %s", p, exc)
        self.stream = self._open()
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


class ServedLogWriter:
    """Append-only JSON-lines writer, safe across threads; each line is flushed when written; rotated by
    size/age with retention (see the module doc)."""

    def __init__(self, path: str | Path | None, max_bytes: int = 0, every_s: int = 0, backup_count: int = 0):
        self.path = Path(path) if path else None
        self.errors = 0
        self._lock = threading.Lock()
        self._handler: SizeAndTimeRotatingHandler | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handler = SizeAndTimeRotatingHandler(self.path, max_bytes, every_s, backup_count)

    @classmethod
    def from_settings(cls, settings) -> "ServedLogWriter":
        r = settings.log_rotation
        return cls(settings.log_path, max_bytes=r.max_bytes, every_s=r.every_s, backup_count=r.backup_count)

    def write(self, record: ServedLog) -> bool:
        """Write one line; False (logged, counted in `errors`) if it could not be written. Never raises."""
        if self._handler is None:
            return True
        try:
            line = encode_record(record)
            rec = logging.LogRecord("mirec.served", logging.INFO, __file__, 0, line, None, None)
            with self._lock:
                self._handler.handle(rec)
            return True
        except Exception as exc:  # noqa: BLE001 - the answer exists: never fail the request over its log line
            self.errors += 1
            log.error("served-log line for request %r not written: %s: %s", getattr(record, "request_id", "?"),
                      type(exc).__name__, exc)
            return False

    def close(self) -> None:
        with self._lock:
            if self._handler is not None:
                self._handler.close()
                self._handler = None


def read_served_log(path: str | Path) -> list[ServedLog]:
    """Parse a served-log file back into records (used by tests and monitoring)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(ServedLog.model_validate_json(line))
    return out

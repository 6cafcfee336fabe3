"""Writes the served log: one `ServedLog` JSON line per answered request (what monitoring reads)."""

from __future__ import annotations

import threading
from pathlib import Path

from mirec.serving.schema import ServedLog


class ServedLogWriter:
    """Append-only JSON-lines writer, safe across threads; each line is flushed when written."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._fh = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, record: ServedLog) -> None:
        if self._fh is None:
            return
        line = record.model_dump_json() + "\n"
        with self._lock:
            self._fh.write(line)
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def read_served_log(path: str | Path) -> list[ServedLog]:
    """Parse a served-log file back into records (used by tests and monitoring)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(ServedLog.model_validate_json(line))
    return out

"""What every pipeline step shares: its record on disk (`_step.json`), fresh output folders, kfp metadata.

Each step reads its inputs from paths, writes its outputs under the output path it is given (a directory,
wiped first, so a re-run overwrites cleanly), returns a small JSON-able dict (what the component puts in the
artifact metadata) and writes the same dict as `_step.json` beside its outputs.
"""

from __future__ import annotations

import importlib
import json
import math
import shutil
from datetime import datetime, timezone
from pathlib import Path

from mirec.errors import MirecError

STEP_FILE = "_step.json"
DECISION_FILE = "decision.json"
CANDIDATES = ("A", "B")


class StepUnavailable(MirecError):
    """A library piece a step needs is not part of this build."""


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fresh_dir(path: str | Path) -> Path:
    """Empty directory at `path` (re-runs overwrite cleanly)."""
    p = Path(path)
    if p.is_file() or p.is_symlink():
        p.unlink()
    elif p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True)
    return p


def write_step(out_dir: Path, step: str, info: dict) -> dict:
    info = {"step": step, "finished": now_utc(), **info}
    (out_dir / STEP_FILE).write_text(json.dumps(info, indent=2, default=str))
    return info


def read_step(path: str | Path) -> dict:
    f = Path(path) / STEP_FILE
    return json.loads(f.read_text()) if f.is_file() else {}


def require(module: str, attr: str, step: str):
    try:
        mod = importlib.import_module(module)
        return getattr(mod, attr)
    except (ImportError, AttributeError) as exc:
        raise StepUnavailable(f"step '{step}' needs {module}.{attr}, which is not available in this build "
                              f"({type(exc).__name__}: {exc})") from None


def num(v) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or math.isinf(f) else f


def deep_intify(obj):
    if isinstance(obj, dict):
        return {k: deep_intify(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [deep_intify(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer() and abs(obj) < 2**53:
        return int(obj)
    return obj


def model_cfg_ints(cfg: dict, cls) -> dict:
    """Whole floats back to int only for the fields the pydantic model declares as int."""
    import typing

    out = dict(cfg)
    for name, field in cls.model_fields.items():
        v = out.get(name)
        ann = field.annotation
        args = typing.get_args(ann)
        is_int = ann is int or (int in args and float not in args)
        if is_int and isinstance(v, float) and v.is_integer():
            out[name] = int(v)
        elif isinstance(v, list) and (typing.get_origin(ann) is tuple or tuple in (typing.get_origin(a) for a in args)):
            out[name] = [int(x) if isinstance(x, float) and x.is_integer() else x for x in v]
    return out



def artifact_metadata(info: dict) -> dict:
    """Flat scalar metadata for a kfp artifact (nested values as compact JSON strings)."""
    md = {}
    for k, v in info.items():
        if isinstance(v, (str, bool, int, float)) or v is None:
            md[k] = v if v is not None else ""
        else:
            md[k] = json.dumps(v, default=str, separators=(",", ":"))[:2000]
    return md

"""Loaders: read raw interaction/item files into the canonical *raw* frames.

A raw interaction frame has the canonical columns `user_id, item_id, timestamp, weight` as
strings/objects exactly as read (parsing and validation happen in `validate.py`, so that a
row that fails to parse is quarantined with its reason instead of crashing the loader).
A raw item frame has `item_id, category, categories`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mirec.config import SourceConfig
from mirec.errors import DataError

RAW_COLUMNS = ["user_id", "item_id", "timestamp", "weight"]


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                               na_values=[""], on_bad_lines="error")
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    raise DataError(f"unsupported file type '{suffix}' for {path} (use .csv, .tsv or .parquet)")


def _map_columns(df: pd.DataFrame, mapping: dict[str, str | None], path: Path) -> pd.DataFrame:
    missing = [src for src in mapping.values() if src is not None and src not in df.columns]
    if missing:
        raise DataError(
            f"{path.name}: missing column(s) {missing}; found {list(df.columns)[:12]}. "
            "Set source.columns in the data config to map your column names."
        )
    out = pd.DataFrame({dst: df[src] if src is not None else None for dst, src in mapping.items()})
    return out


def load_table(cfg: SourceConfig) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Generic CSV/Parquet with a column mapping."""
    if cfg.path is None:
        raise DataError("source.path is required for format 'table'")
    path = Path(cfg.path)
    c = cfg.columns
    raw = _map_columns(_read_table(path), {"user_id": c.user_id, "item_id": c.item_id,
                                           "timestamp": c.timestamp, "weight": c.weight}, path)
    items = None
    if cfg.items_path:
        ipath = Path(cfg.items_path)
        items = _map_columns(_read_table(ipath), {"item_id": c.item_id, "category": c.category}, ipath)
        items["categories"] = items["category"]
    return raw, items


def _split_genres(genres: pd.Series) -> tuple[pd.Series, pd.Series]:
    """MovieLens genres 'A|B|C' -> primary category 'A' and all categories 'A|B|C'."""
    genres = genres.fillna("(no genres listed)").astype(str)
    return genres.str.split("|").str[0], genres


def load_movielens_csv(cfg: SourceConfig) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """ml-latest-small / ml-25m layout: folder with ratings.csv (+ movies.csv)."""
    if cfg.path is None:
        raise DataError("source.path (the MovieLens folder or its ratings.csv) is required")
    root = Path(cfg.path)
    ratings = root / "ratings.csv" if root.is_dir() else root
    df = _read_table(ratings)
    raw = _map_columns(df, {"user_id": "userId", "item_id": "movieId", "timestamp": "timestamp",
                            "weight": "rating"}, ratings)
    movies = Path(cfg.items_path) if cfg.items_path else ratings.with_name("movies.csv")
    items = None
    if movies.exists():
        m = _read_table(movies)
        m = _map_columns(m, {"item_id": "movieId", "genres": "genres"}, movies)
        primary, all_ = _split_genres(m["genres"])
        items = pd.DataFrame({"item_id": m["item_id"], "category": primary, "categories": all_})
    return raw, items


def _read_dat(path: Path, names: list[str]) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"input file not found: {path}")
    rows = []
    with open(path, encoding="latin-1") as fh:  # ml-1m .dat files are latin-1
        for line in fh:
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("::")
            # Keep malformed lines as rows with missing fields: validation quarantines them.
            parts = (parts + [None] * len(names))[: len(names)]
            rows.append(parts)
    return pd.DataFrame(rows, columns=names, dtype=object)


def load_movielens_dat(cfg: SourceConfig) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """ml-1m layout: ratings.dat 'UserID::MovieID::Rating::Timestamp', movies.dat 'MovieID::Title::Genres'."""
    if cfg.path is None:
        raise DataError("source.path (the MovieLens folder or its ratings.dat) is required")
    root = Path(cfg.path)
    ratings = root / "ratings.dat" if root.is_dir() else root
    r = _read_dat(ratings, ["user_id", "item_id", "weight", "timestamp"])
    raw = r[RAW_COLUMNS]
    movies = Path(cfg.items_path) if cfg.items_path else ratings.with_name("movies.dat")
    items = None
    if movies.exists():
        m = _read_dat(movies, ["item_id", "title", "genres"])
        primary, all_ = _split_genres(m["genres"])
        items = pd.DataFrame({"item_id": m["item_id"], "category": primary, "categories": all_})
    return raw, items


def load_whitespace(cfg: SourceConfig) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """'user item rating timestamp' per line, any whitespace, no header (ml-100k u.data style)."""
    if cfg.path is None:
        raise DataError("source.path is required for format 'whitespace'")
    path = Path(cfg.path)
    if not path.exists():
        raise DataError(f"input file not found: {path}")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.split()
            if not parts:
                continue
            rows.append((parts + [None] * 4)[:4] if len(parts) <= 4 else parts[:3] + [" ".join(parts[3:])])
    raw = pd.DataFrame(rows, columns=["user_id", "item_id", "weight", "timestamp"], dtype=object)[RAW_COLUMNS]
    return raw, None


LOADERS = {
    "table": load_table,
    "movielens-csv": load_movielens_csv,
    "movielens-dat": load_movielens_dat,
    "whitespace": load_whitespace,
}


def load_raw(cfg: SourceConfig) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Dispatch on `cfg.format`; returns (raw interactions, raw items or None)."""
    try:
        loader = LOADERS[cfg.format]
    except KeyError:
        raise DataError(f"format '{cfg.format}' has no file loader (known: {sorted(LOADERS)})") from None
    raw, items = loader(cfg)
    if len(raw) == 0:
        raise DataError(f"no rows in {cfg.path}")
    return raw, items

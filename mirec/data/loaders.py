"""Loaders: read raw interaction/item files into the canonical *raw* frames.

A raw interaction frame has the canonical columns `user_id, item_id, timestamp, weight` as
strings/objects exactly as read (parsing and validation happen in `validate.py`, so that a
row that fails to parse is quarantined with its reason instead of crashing the loader).
A line that cannot even be split into those fields (too many/too few) becomes a row with null
fields and its text in an extra `raw_line` column; validation quarantines it as `malformed_line`.
A raw item frame has `item_id, category, categories`.

Errors that make the whole input unusable (file not found, wrong file type, missing columns,
undecodable text) raise `DataError` with a one-line message.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mirec.config import SourceConfig
from mirec.errors import DataError

RAW_COLUMNS = ["user_id", "item_id", "timestamp", "weight"]


def _arrow_strings(t: pa.DataType):
    return pd.ArrowDtype(t) if pa.types.is_string(t) or pa.types.is_large_string(t) else None


_COMPRESSION = (".gz", ".bz2", ".zip", ".xz", ".zst")


def _kind(path: Path) -> str:
    suffixes = [x.lower() for x in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _read_csv(path: Path, sep: str) -> pd.DataFrame:
    """CSV as strings. Lines with too many fields become rows with `raw_line` set (quarantined
    as malformed_line by validation) instead of failing the whole file; short lines are padded
    with nulls by pandas (quarantined for the missing field)."""
    kw = dict(sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    try:
        return pd.read_csv(path, on_bad_lines="error", **kw)
    except pd.errors.ParserError:
        pass  # some line has too many fields: re-read, collecting those lines
    bad: list[list[str]] = []

    def keep_bad(fields: list[str]) -> None:
        bad.append(fields)
        return None

    df = pd.read_csv(path, on_bad_lines=keep_bad, engine="python", **kw)
    if bad:
        extra = pd.DataFrame({c: [None] * len(bad) for c in df.columns}, dtype=object)
        extra["raw_line"] = [sep.join(map(str, f)) for f in bad]
        df = pd.concat([df.astype(object), extra], ignore_index=True)
    return df


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"input file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a .csv/.tsv/.parquet file (or use --format movielens-csv)")
    kind = _kind(path)
    try:
        if kind == ".parquet":
            # Strings stay Arrow-backed: ids are factorised in Arrow, not as millions of Python str.
            return pq.read_table(path).to_pandas(types_mapper=_arrow_strings)
        if kind in (".csv", ".tsv", ".txt"):
            return _read_csv(path, "\t" if kind == ".tsv" else ",")
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"cannot read {path}: {first}") from None
    raise DataError(f"unsupported file type '{kind or path.name}' for {path} (use .csv, .tsv or .parquet)")


MAPPING_HINT = "Map your column names with --map canonical=source (or source.columns in the data config)."


def _map_columns(df: pd.DataFrame, mapping: dict[str, str | None], path: Path,
                 hint: str = MAPPING_HINT) -> pd.DataFrame:
    missing = [src for src in mapping.values() if src is not None and src not in df.columns]
    if missing:
        raise DataError(f"{path.name}: missing column(s) {missing}; found {list(df.columns)[:12]}. {hint}")
    out = pd.DataFrame({dst: df[src] if src is not None else None for dst, src in mapping.items()})
    if "raw_line" in df.columns and "raw_line" not in out.columns:
        out["raw_line"] = df["raw_line"]
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
                            "weight": "rating"}, ratings,
                       "Is this a MovieLens ratings.csv? For other layouts use --format table with --map.")
    movies = Path(cfg.items_path) if cfg.items_path else ratings.with_name("movies.csv")
    items = None
    if movies.exists():
        m = _read_table(movies)
        m = _map_columns(m, {"item_id": "movieId", "genres": "genres"}, movies)
        primary, all_ = _split_genres(m["genres"])
        items = pd.DataFrame({"item_id": m["item_id"], "category": primary, "categories": all_})
    return raw, items


def _split_lines(path: Path, names: list[str], splitter, encoding: str) -> pd.DataFrame:
    """One row per non-empty line; a line with the wrong number of fields keeps its text in
    `raw_line` (and null fields), so validation quarantines it as malformed_line."""
    if not path.exists():
        raise DataError(f"input file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a folder, expected a file")
    rows: list[list[str | None]] = []
    raw_lines: list[str | None] = []
    k = len(names)
    try:
        with open(path, encoding=encoding, errors="strict") as fh:
            for line in fh:
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                parts = splitter(line)
                if len(parts) == k:
                    rows.append(parts)
                    raw_lines.append(None)
                else:
                    rows.append([None] * k)
                    raw_lines.append(line)
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read {path}: not {encoding} text ({exc.reason})") from None
    df = pd.DataFrame(rows, columns=names, dtype=object)
    if any(r is not None for r in raw_lines):
        df["raw_line"] = pd.Series(raw_lines, dtype=object)
    return df


def _read_dat(path: Path, names: list[str]) -> pd.DataFrame:
    # ml-1m .dat files are latin-1 (movie titles); every byte decodes, so no decode errors.
    return _split_lines(path, names, lambda line: line.split("::"), "latin-1")


def load_movielens_dat(cfg: SourceConfig) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """ml-1m layout: ratings.dat 'UserID::MovieID::Rating::Timestamp', movies.dat 'MovieID::Title::Genres'."""
    if cfg.path is None:
        raise DataError("source.path (the MovieLens folder or its ratings.dat) is required")
    root = Path(cfg.path)
    ratings = root / "ratings.dat" if root.is_dir() else root
    r = _read_dat(ratings, ["user_id", "item_id", "weight", "timestamp"])
    raw = r[RAW_COLUMNS + (["raw_line"] if "raw_line" in r.columns else [])]
    movies = Path(cfg.items_path) if cfg.items_path else ratings.with_name("movies.dat")
    items = None
    if movies.exists():
        m = _read_dat(movies, ["item_id", "title", "genres"])
        m = m[m["item_id"].notna()]  # item metadata lines that do not parse are ignored (not interactions)
        primary, all_ = _split_genres(m["genres"])
        items = pd.DataFrame({"item_id": m["item_id"], "category": primary, "categories": all_})
    return raw, items


def load_whitespace(cfg: SourceConfig) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """'user item rating timestamp' per line, any whitespace, no header (ml-100k u.data style)."""
    if cfg.path is None:
        raise DataError("source.path is required for format 'whitespace'")
    path = Path(cfg.path)
    r = _split_lines(path, ["user_id", "item_id", "weight", "timestamp"], str.split, "utf-8")
    raw = r[RAW_COLUMNS + (["raw_line"] if "raw_line" in r.columns else [])]
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

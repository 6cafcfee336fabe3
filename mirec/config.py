"""Typed configuration (pydantic), loadable from YAML.

Each subsystem owns its config model next to its code; this module holds the data configs
and the YAML helpers every other config uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mirec.errors import ConfigError

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for configs: unknown keys are an error (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


def load_yaml_config(cls: type[T], path: str | Path | None, **overrides) -> T:
    """Load `cls` from a YAML file (or defaults when path is None), then apply overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return validate_config(cls, data, **overrides)


def load_yaml_sections(path: str | Path, sections: tuple[str, ...]) -> dict:
    """A YAML file holding a mapping of some of `sections` (e.g. `model:` / `train:` for `mirec train --config`,
    `mirec tune --config`) -> that mapping; a missing file, bad YAML or another top-level key is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict) or set(raw) - set(sections):
        raise ConfigError(f"{path}: expected a mapping with " + " and/or ".join(f"`{x}:`" for x in sections)
                          + " sections")
    return raw


def validate_config(cls: type[T], data: dict, **overrides) -> T:
    """`cls.model_validate(data | overrides)`; a bad value becomes a one-line ConfigError naming the field
    (the CLI prints it and exits 2) instead of a pydantic traceback. None overrides are ignored."""
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise ConfigError(f"invalid {cls.__name__} at '{where}': {first['msg']}") from None


def dump_yaml_config(cfg: BaseModel, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


class ColumnMapping(StrictModel):
    """Which source column holds each canonical field."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    weight: str | None = None
    #: item table columns (for csv/parquet item files)
    category: str = "category"


class SourceConfig(StrictModel):
    """Where raw interactions come from, and in which format.

    format:
      - `table`: generic CSV or Parquet with `columns` mapping (item file optional);
      - `movielens-csv`: ratings.csv + movies.csv (ml-latest-small, ml-25m, ...);
      - `movielens-dat`: ratings.dat + movies.dat, '::'-separated (ml-1m, ml-10m);
      - `whitespace`: 'user item rating timestamp' per line, no header (ml-100k u.data style);
      - `synthetic`: the embedded generator (see SynthConfig).
    """

    format: Literal["table", "movielens-csv", "movielens-dat", "whitespace", "synthetic"] = "synthetic"
    path: str | None = None  # interactions file, or the folder holding ratings/movies files
    items_path: str | None = None
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    #: timestamps given as strings are parsed with this format (None: ISO-8601 / unix seconds)
    timestamp_format: str | None = None


class SynthConfig(StrictModel):
    """Synthetic multi-interest data: items in clusters, users mixing a few clusters with drift."""

    n_users: int = Field(2000, ge=10)
    n_items: int = Field(5000, ge=20, le=2_000_000)
    n_categories: int = Field(20, ge=2)
    dim: int = Field(16, ge=2)
    interests_per_user: tuple[int, int] = (1, 4)  # inclusive range of true interests per user
    seq_len: tuple[int, int] = (20, 80)  # inclusive range of events per user
    drift: float = Field(0.15, ge=0, le=1)  # prob. that a user's interest mix shifts mid-sequence
    noise: float = Field(0.05, ge=0, le=1)  # share of events drawn uniformly from the catalogue
    popularity_skew: float = Field(1.0, ge=0)  # Zipf exponent of within-cluster popularity
    seed: int = 0


class SplitConfig(StrictModel):
    kind: Literal["comirec", "temporal"] = "comirec"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    input_frac: float = Field(0.8, gt=0, lt=1)  # for valid/test users: input prefix, rest = targets
    seed: int = 2021
    #: temporal split: interactions after this quantile of time are the test period
    temporal_test_quantile: float = Field(0.9, gt=0, lt=1)


class DataConfig(StrictModel):
    name: str = "synthetic"
    source: SourceConfig = Field(default_factory=SourceConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    min_user_count: int = Field(5, ge=1)
    min_item_count: int = Field(5, ge=1)
    out_dir: str = "artifacts/data/synthetic"

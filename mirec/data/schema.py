"""The prepared dataset: canonical Parquet tables + id maps, and the `Dataset` object that reads them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from mirec.data.split import split_sequence
from mirec.errors import DataError

INTERACTIONS = "interactions.parquet"
ITEMS = "items.parquet"
USERS = "users.parquet"
QUARANTINE = "quarantine.parquet"
SUMMARY = "summary.json"
META = "dataset.json"
TRUTH = "truth"
UNKNOWN_CATEGORY = "(unknown)"


@dataclass(frozen=True)
class EvalExample:
    user_idx: int
    history: np.ndarray  # item_idx, time-ordered
    targets: np.ndarray  # item_idx, time-ordered


class IdMap:
    """External id <-> contiguous index. Serving speaks external ids; models speak indices."""

    def __init__(self, ids: np.ndarray | list[str]):
        self.ids = np.asarray(ids, dtype=object)
        self._index = {str(x): i for i, x in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def to_index(self, external_ids, missing: int = -1) -> np.ndarray:
        return np.array([self._index.get(str(x), missing) for x in external_ids], dtype=np.int64)

    def to_external(self, idx) -> list[str]:
        return [str(self.ids[i]) for i in np.asarray(idx, dtype=np.int64)]

    def __contains__(self, external_id) -> bool:
        return str(external_id) in self._index


class Dataset:
    """A prepared dataset directory (see docs/CONTRACTS.md)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        for name in (INTERACTIONS, ITEMS, USERS, META):
            if not (self.root / name).exists():
                raise DataError(f"{self.root} is not a prepared dataset (missing {name}); run `mirec data prepare`")
        self.meta: dict = json.loads((self.root / META).read_text())
        self.interactions = pd.read_parquet(self.root / INTERACTIONS)
        self.items = pd.read_parquet(self.root / ITEMS).sort_values("item_idx").reset_index(drop=True)
        self.users = pd.read_parquet(self.root / USERS).sort_values("user_idx").reset_index(drop=True)

    load = classmethod(lambda cls, root: cls(root))

    @property
    def name(self) -> str:
        return self.meta.get("name", self.root.name)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_categories(self) -> int:
        return int(self.items["category_idx"].max()) + 1

    @cached_property
    def item_category(self) -> np.ndarray:
        return self.items["category_idx"].to_numpy(np.int64)

    @cached_property
    def category_names(self) -> list[str]:
        c = self.items[["category_idx", "category"]].drop_duplicates().sort_values("category_idx")
        return c["category"].tolist()

    @cached_property
    def item_ids(self) -> IdMap:
        return IdMap(self.items["item_id"].to_numpy())

    @cached_property
    def user_ids(self) -> IdMap:
        return IdMap(self.users["user_id"].to_numpy())

    @cached_property
    def item_popularity(self) -> np.ndarray:
        return self.items["popularity"].to_numpy(np.int64)

    @cached_property
    def sequences(self) -> dict[int, np.ndarray]:
        """user_idx -> time-ordered item_idx (the table is stored sorted with the tie-break)."""
        df = self.interactions
        u = df["user_idx"].to_numpy()
        items = df["item_idx"].to_numpy()
        bounds = np.flatnonzero(np.diff(u)) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [len(u)]])
        return {int(u[s]): items[s:e] for s, e in zip(starts, ends)}

    @cached_property
    def _timestamps(self) -> dict[int, np.ndarray]:
        df = self.interactions
        u = df["user_idx"].to_numpy()
        ts = df["timestamp"].to_numpy()
        bounds = np.flatnonzero(np.diff(u)) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [len(u)]])
        return {int(u[s]): ts[s:e] for s, e in zip(starts, ends)}

    def users_in(self, split: str) -> np.ndarray:
        return self.users.loc[self.users["split"] == split, "user_idx"].to_numpy(np.int64)

    @property
    def cutoff(self) -> int | None:
        return self.meta.get("temporal_cutoff")

    def train_sequences(self) -> dict[int, np.ndarray]:
        """Training sequences: train users' whole sequences (comirec) or every user's pre-cut events (temporal)."""
        if self.cutoff is None:
            return {u: self.sequences[u] for u in self.users_in("train")}
        out = {}
        for u, seq in self.sequences.items():
            keep = self._timestamps[u] < self.cutoff
            if keep.sum() >= 2:
                out[u] = seq[keep]
        return out

    def eval_examples(self, split: str, input_frac: float | None = None) -> list[EvalExample]:
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', not {split!r}")
        frac = input_frac if input_frac is not None else self.meta.get("input_frac", 0.8)
        out = []
        for u in self.users_in(split):
            seq = self.sequences[int(u)]
            if self.cutoff is None:
                if len(seq) < 2:
                    continue
                hist, tgt = split_sequence(seq, frac)
            else:
                before = self._timestamps[int(u)] < self.cutoff
                hist, tgt = seq[before], seq[~before]
            out.append(EvalExample(int(u), hist, tgt))
        return out

    def truth(self) -> pd.DataFrame | None:
        p = self.root / TRUTH / "user_interests.parquet"
        return pd.read_parquet(p) if p.exists() else None

    def summary(self) -> dict:
        p = self.root / SUMMARY
        return json.loads(p.read_text()) if p.exists() else {}

"""The prepared dataset: canonical Parquet tables + id maps, and the `Dataset` object that reads them."""

from __future__ import annotations

import copy
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


def ordered_ids(ids) -> np.ndarray:
    """Distinct external ids in index order: numerically when every id is an integer literal
    (so MovieLens movieId 2 < 10 and item_idx follows movieId), else lexicographically.

    This order is also the same-second tie-break of the sequences (by item_idx)."""
    s = pd.Series(pd.unique(pd.Series(ids, dtype=object).astype(str)), dtype=object)
    if len(s) == 0:
        return np.array([], dtype=object)
    if s.str.fullmatch(r"[+-]?\d{1,18}").all():
        num = s.astype(np.int64).to_numpy()
        order = np.lexsort((s.to_numpy(dtype=str), num))
    else:
        order = np.argsort(s.to_numpy(dtype=str), kind="stable")
    return s.to_numpy()[order]


class IdMap:
    """External id <-> contiguous index. Serving speaks external ids; models speak indices.

    `IdMap(ids)` takes the ids in index order (row i of items.parquet / users.parquet);
    `IdMap.from_ids(any_ids)` builds the canonical order with `ordered_ids`."""

    def __init__(self, ids: np.ndarray | list[str]):
        self.ids = np.asarray([str(x) for x in ids], dtype=object)
        self._pd = pd.Index(self.ids)
        if not self._pd.is_unique:
            raise DataError("IdMap: external ids are not unique")
        self._index = {x: i for i, x in enumerate(self.ids)}

    @classmethod
    def from_ids(cls, ids) -> "IdMap":
        return cls(ordered_ids(ids))

    def to_index_fast(self, external_ids) -> np.ndarray:
        """Vectorised `to_index` for large arrays (-1 for unknown ids)."""
        return self._pd.get_indexer(pd.Index(np.asarray(external_ids, dtype=object).astype(str))).astype(np.int64)

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

    def resplit(self, seed: int) -> "Dataset":
        """The same data with the ComiRec user split (8:1:1 train/valid/test) drawn again with `seed`: the
        repeated-split evaluation that makes small datasets less noisy. Files are not changed; the returned
        Dataset shares this one's tables except `users` (and `meta["split_seed"]`)."""
        from mirec.config import SplitConfig
        from mirec.data.split import assign_user_splits

        if self.meta.get("split") != "comirec":
            raise DataError(f"{self.root}: only the comirec split can be re-drawn (this one is {self.meta.get('split')!r})")
        ratios = tuple((self.meta.get("config") or {}).get("split", {}).get("ratios", (0.8, 0.1, 0.1)))
        new = copy.copy(self)
        new.__dict__ = {k: v for k, v in self.__dict__.items() if k in ("root", "interactions", "items", "meta",
                                                                         "sequences", "_timestamps")}
        new.meta = {**self.meta, "split_seed": int(seed)}
        new.users = self.users.copy()
        new.users["split"] = assign_user_splits(len(self.users), SplitConfig(seed=int(seed), ratios=ratios))
        return new

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
        """Synthetic data only: planted interests, one row per (user, phase, interest) with
        user_idx, phase, category, category_idx (= interest_id), weight, n_interests,
        diversity_pref, drifted. None for real data."""
        p = self.root / TRUTH / "user_interests.parquet"
        return pd.read_parquet(p) if p.exists() else None

    def truth_item_vectors(self) -> np.ndarray | None:
        """Synthetic data only: the planted item vectors [n_items, dim] (row = item_idx)."""
        p = self.root / TRUTH / "item_vectors.npy"
        return np.load(p) if p.exists() else None

    def summary(self) -> dict:
        p = self.root / SUMMARY
        return json.loads(p.read_text()) if p.exists() else {}

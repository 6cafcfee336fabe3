"""Training examples from the Feast offline store's point-in-time frame.

The prepared-dataset path (mirec.train.Examples) cuts every training sequence at each position t >= 1: history =
the previous max_len items, target = item t. The Feast path asks the offline store for the same thing as a
feature join: one label row per (user, event) at t >= 1, and `recent_item_idx` = the user's items strictly before
the event's time, point-in-time correct (mirec.features.training_frame). `FrameExamples` serves those rows to the
trainer through the Examples interface (same ids, lengths and batches), so `train(..., examples=...)` trains on
what the feature store returned. When every user's events have distinct timestamps and the store keeps at least
max_len items (features seq_len >= model max_len) both paths give identical examples (tests/test_features_training.py).

    labels = training_labels(ds)                              # every (user, position >= 1) of ds.train_sequences()
    frame = training_frame(labels, features_cfg)              # Feast get_historical_features
    ex = FrameExamples.from_frame(frame, max_len=model_cfg.max_len)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mirec.data import Dataset
from mirec.errors import ConfigError, DataError
from mirec.train import Examples

EXAMPLES_FILE = "training_examples.parquet"
LABEL_COLUMNS = ["user_id", "timestamp", "user_idx", "item_idx", "pos", "seq_order"]


def training_labels(ds: Dataset) -> pd.DataFrame:
    """One row per training example of the prepared path: every position t >= 1 of every training sequence, in the
    trainer's order (sequence order of ds.train_sequences(), then position). seq_order: the sequence's index."""
    user_ids = ds.users.set_index("user_idx")["user_id"]
    rows = []
    order = 0
    for u, seq in ds.train_sequences().items():
        if len(seq) < 2:
            continue
        ts = ds._timestamps[u][: len(seq)]  # train_sequences keeps a time-ordered prefix of the user's events
        pos = np.arange(1, len(seq))
        rows.append(pd.DataFrame({"user_id": str(user_ids[u]), "timestamp": ts[pos], "user_idx": u,
                                  "item_idx": seq[pos], "pos": pos, "seq_order": order}))
        order += 1
    if not rows:
        raise DataError("the dataset has no training sequence with two or more events")
    return pd.concat(rows, ignore_index=True)


def ties_within_users(labels: pd.DataFrame, ds: Dataset) -> int:
    """How many examples share their timestamp with the event before them (a point-in-time join cannot order
    events of one second: such histories differ from the position-based ones)."""
    n = 0
    for u, g in labels.groupby("user_idx"):
        ts = ds._timestamps[int(u)]
        n += int(np.sum(ts[g["pos"].to_numpy()] == ts[g["pos"].to_numpy() - 1]))
    return n


class FrameExamples(Examples):
    """Examples whose histories come from a point-in-time frame (one row per example) instead of cut sequences."""

    def __init__(self, histories: list[np.ndarray], targets: np.ndarray, sid: np.ndarray, pos: np.ndarray,
                 max_len: int):
        if not (len(histories) == len(targets) == len(sid) == len(pos)):
            raise DataError("FrameExamples: histories, targets, sid and pos differ in length")
        self.max_len = max_len
        self.hist = [np.asarray(h, np.int64)[-max_len:] for h in histories]
        self.targets = np.asarray(targets, np.int64)
        self.sid = np.asarray(sid, np.int64)
        self.pos = np.asarray(pos, np.int64)
        self.length = np.array([len(h) for h in self.hist], np.int64)
        empty = int(np.sum(self.length == 0))
        if empty:
            raise DataError(f"{empty} training example(s) have an empty Feast history (label at a user's first "
                            "event, or events missing from the offline store)")
        self.seqs = []  # no whole sequences on this path
        self.target_freq = np.bincount(self.targets) if len(self.targets) else np.bincount([0])

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, max_len: int, seq_len: int | None = None) -> "FrameExamples":
        need = {"recent_item_idx", "item_idx", "seq_order", "pos"}
        if not need <= set(frame.columns):
            raise DataError(f"training frame lacks {sorted(need - set(frame.columns))}")
        if seq_len is not None and seq_len < max_len:
            raise ConfigError(f"the feature store keeps {seq_len} recent items (features seq_len) but the model uses "
                              f"{max_len} (model max_len): raise features_config.seq_len to at least {max_len}")
        f = frame.sort_values(["seq_order", "pos"], kind="stable")
        return cls([np.asarray(h, np.int64) for h in f["recent_item_idx"]], f["item_idx"].to_numpy(),
                   f["seq_order"].to_numpy(), f["pos"].to_numpy(), max_len)

    @classmethod
    def read(cls, path: str | Path, max_len: int, seq_len: int | None = None) -> "FrameExamples":
        return cls.from_frame(pd.read_parquet(path), max_len, seq_len=seq_len)

    def repeat_rate(self, sample: int = 20000, seed: int = 0) -> float:
        if not len(self):
            return 0.0
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(self), size=min(sample, len(self)), replace=False)
        return float(np.mean([bool(np.any(self.hist[i] == self.targets[i])) for i in idx]))

    def collate(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        L = int(self.length[ids].max())
        seq = torch.zeros(len(ids), L, dtype=torch.long)
        tgt = torch.empty(len(ids), dtype=torch.long)
        for b, i in enumerate(ids):
            h = self.hist[i]
            seq[b, : len(h)] = torch.from_numpy(h + 1)
            tgt[b] = int(self.targets[i]) + 1
        return seq, seq > 0, tgt

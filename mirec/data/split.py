"""Splits.

- `comirec` (default, the ComiRec protocol): users are shuffled with a fixed seed and split 8:1:1
  into train/valid/test. Train users' whole sequences are training data; for valid/test users the
  first `input_frac` (80%) of their time-ordered sequence is the model input, the rest the targets.
- `temporal`: one global cut at a time quantile. Everything before the cut is training data (for
  all users); users with events after the cut are evaluation users (half valid, half test, by seed):
  input = their events before the cut, targets = their events after it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mirec.config import SplitConfig


def assign_user_splits(n_users: int, cfg: SplitConfig) -> np.ndarray:
    """-> array of 'train'|'valid'|'test' per user_idx (deterministic in cfg.seed)."""
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(n_users)
    r = np.asarray(cfg.ratios, dtype=float)
    r = r / r.sum()
    n_train = int(round(r[0] * n_users))
    n_valid = int(round(r[1] * n_users))
    split = np.empty(n_users, dtype=object)
    split[perm[:n_train]] = "train"
    split[perm[n_train:n_train + n_valid]] = "valid"
    split[perm[n_train + n_valid:]] = "test"
    return split


def temporal_cutoff(interactions: pd.DataFrame, cfg: SplitConfig) -> int:
    return int(np.quantile(interactions["timestamp"].to_numpy(), cfg.temporal_test_quantile))


def assign_temporal_splits(interactions: pd.DataFrame, n_users: int, cutoff: int, cfg: SplitConfig) -> np.ndarray:
    """Users with events both before and after the cutoff are evaluated (valid/test by seed)."""
    ts = interactions["timestamp"].to_numpy()
    u = interactions["user_idx"].to_numpy()
    before = np.bincount(u[ts < cutoff], minlength=n_users) > 0
    after = np.bincount(u[ts >= cutoff], minlength=n_users) > 0
    split = np.full(n_users, "train", dtype=object)
    eval_users = np.flatnonzero(before & after)
    rng = np.random.default_rng(cfg.seed)
    rng.shuffle(eval_users)
    half = len(eval_users) // 2
    split[eval_users[:half]] = "valid"
    split[eval_users[half:]] = "test"
    return split


def split_sequence(seq: np.ndarray, input_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """First `input_frac` of a time-ordered sequence -> input, rest -> targets (both non-empty)."""
    n_in = int(len(seq) * input_frac)
    n_in = min(max(n_in, 1), len(seq) - 1)
    return seq[:n_in], seq[n_in:]

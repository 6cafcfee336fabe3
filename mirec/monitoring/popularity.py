"""History popularity of a request: the input-drift signal for "histories filled with popular items".

`ServedLog.history_popularity = history_popularity(known_history_idx, item_popularity)`:
- `head_share`: share of the history's known items that are in the catalogue's head (the top
  `HEAD_FRACTION` = 10% of items by training popularity; ties broken by item_idx, as `head_mask` does);
- `mean_log_pop`: mean log1p(popularity) of those items.
Both are per answer; the monitor compares their distributions with the reference (drift tests) and
their window means (direction in the alert text: "more popular histories"). The serving code computes
them with this function from the MAR's items.parquet popularity, the monitoring reference with the
same function from the same table, so both sides measure alike. numpy only (importable by serving).
"""

from __future__ import annotations

import numpy as np

HEAD_FRACTION = 0.1


def head_mask(popularity: np.ndarray, fraction: float = HEAD_FRACTION) -> np.ndarray:
    """[N] bool: the top `fraction` of items by popularity (at least one item)."""
    pop = np.asarray(popularity, np.float64)
    k = max(1, int(round(fraction * len(pop))))
    order = np.lexsort((np.arange(len(pop)), -pop))  # most popular first, ties by item_idx
    mask = np.zeros(len(pop), bool)
    mask[order[:k]] = True
    return mask


def history_popularity(history_idx: np.ndarray, popularity: np.ndarray, head: np.ndarray | None = None
                       ) -> dict[str, float] | None:
    """Known history item_idx -> {"head_share", "mean_log_pop"}; None for an empty history."""
    h = np.asarray(history_idx, np.int64)
    if h.size == 0:
        return None
    pop = np.asarray(popularity, np.float64)
    head = head_mask(pop) if head is None else head
    return {"head_share": round(float(head[h].mean()), 6), "mean_log_pop": round(float(np.log1p(pop[h]).mean()), 6)}

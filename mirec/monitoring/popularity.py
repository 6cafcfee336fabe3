"""History popularity of a request: the input-drift signal for "histories filled with popular items".

`ServedLog.history_popularity = history_popularity(known_history_idx, item_popularity)`:
- `head_share`: share of the history's known items that are in the catalogue's head (the top
  `HEAD_FRACTION` = 10% of items by training popularity; ties broken by item_idx, as `head_mask` does);
- `mean_log_pop`: mean log1p(popularity) of those items.
Both are per answer; the monitor compares their distributions with the reference (drift tests) and
their window means (direction in the alert text: "more popular histories"). The serving code computes
them with this function from the MAR's items.parquet popularity, the monitoring reference with the
same function from the same table, so both sides measure alike. The functions live in mirec.metrics
(the bottom layer, so the handler imports them without the monitoring package); this module names
them for the monitor.
"""

from __future__ import annotations

from mirec.metrics import HEAD_FRACTION, head_mask, history_popularity

__all__ = ["HEAD_FRACTION", "head_mask", "history_popularity"]

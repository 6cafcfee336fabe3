"""Validation rules: every rejected row is quarantined with its reason and counted; bad input is a DataError."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mirec.data.validate import REASONS, parse_timestamps, validate
from mirec.errors import DataError


def _block(user: str, items: list[str], t0: int = 1_600_000_000, weight="1") -> list[dict]:
    return [{"user_id": user, "item_id": it, "timestamp": str(t0 + k), "weight": weight} for k, it in enumerate(items)]


def _good(n_users: int = 6, n_items: int = 6) -> list[dict]:
    """Every user rates every item: all counts >= 5, nothing filtered."""
    rows = []
    for u in range(n_users):
        rows += _block(f"u{u}", [f"i{i}" for i in range(n_items)], t0=1_600_000_000 + 100 * u)
    return rows


def _run(rows, **kw):
    kept, q, rep = validate(pd.DataFrame(rows, dtype=object), **kw)
    assert rep.rows_kept + sum(rep.quarantined.values()) == rep.rows_in == len(rows)
    assert len(q) == sum(rep.quarantined.values())
    assert set(rep.quarantined) == set(REASONS)
    return kept, q, rep


def test_clean_input_keeps_everything():
    kept, q, rep = _run(_good())
    assert rep.rows_kept == 36 and len(q) == 0 and rep.filter_iterations == 0
    assert kept["timestamp"].dtype == np.int64 and kept["weight"].dtype == np.float32
    assert rep.users_in == rep.users_kept == 6 and rep.items_in == rep.items_kept == 6


def test_each_rule_quarantines_with_reason_and_count():
    bad = [
        {"user_id": None, "item_id": "i0", "timestamp": "1600000001", "weight": "1"},
        {"user_id": "  ", "item_id": "i0", "timestamp": "1600000001", "weight": "1"},
        {"user_id": "u0", "item_id": "", "timestamp": "1600000001", "weight": "1"},
        {"user_id": "u0", "item_id": "NaN", "timestamp": "1600000001", "weight": "1"},
        {"user_id": "u0", "item_id": "i1", "timestamp": "yesterday-ish", "weight": "1"},
        {"user_id": "u0", "item_id": "i1", "timestamp": None, "weight": "1"},
        {"user_id": "u0", "item_id": "i1", "timestamp": "1600000001", "weight": "five"},
        {"user_id": "u0", "item_id": "i1", "timestamp": "1600000001", "weight": "inf"},
    ]
    good = _good()
    dups = [dict(good[0]), dict(good[7]), dict(good[7])]  # 3 exact duplicates of kept rows
    rows = good + bad + dups
    kept, q, rep = _run(rows)
    assert rep.quarantined == {"malformed_line": 0, "null_user_id": 2, "null_item_id": 2, "bad_timestamp": 2,
                               "bad_weight": 2, "duplicate": 3, "user_min_count": 0, "item_min_count": 0}
    assert rep.rows_kept == 36
    # The quarantine keeps the raw values (as strings, nulls stay null) and the source row.
    assert list(q.columns[:4]) == ["user_id", "item_id", "timestamp", "weight"]
    assert set(q["source_row"]) == set(range(36, len(rows)))
    row = q[q["source_row"] == 36 + 6].iloc[0]
    assert row["reason"] == "bad_weight" and row["weight"] == "five"
    assert q.loc[q["reason"] == "null_user_id", "user_id"].isna().sum() == 1
    # The first occurrence of a duplicated row is kept, the copies are quarantined.
    assert len(kept.merge(pd.DataFrame([good[7]]).astype({"timestamp": "int64"})[["user_id", "item_id", "timestamp"]])) == 1


def test_blank_weight_means_one_and_missing_weight_column_is_fine():
    rows = _good()
    rows[0]["weight"] = ""
    kept, _, _ = _run(rows)
    assert kept["weight"].iloc[0] == 1.0
    df = pd.DataFrame(_good()).drop(columns="weight")
    kept, q, rep = validate(df)
    assert rep.rows_kept == 36 and (kept["weight"] == 1.0).all()


def test_min_counts_iterate_to_fixed_point():
    # Core: 5 users x 5 items (all kept). Chain: user 'a' has 5 events, four of them on items that
    # only 'a' rated (< 5) -> those items go, then 'a' has 1 event (< 5) and goes too: 2 passes.
    rows = []
    for u in range(5):
        rows += _block(f"u{u}", [f"i{i}" for i in range(5)], t0=1_600_000_000 + 10 * u)
    rows += _block("a", ["i0", "x1", "x2", "x3", "x4"], t0=1_700_000_000)
    kept, q, rep = _run(rows)
    assert rep.quarantined["item_min_count"] == 4
    assert rep.quarantined["user_min_count"] == 1
    assert rep.filter_iterations == 2
    assert set(kept["user_id"]) == {f"u{u}" for u in range(5)}
    # After filtering, every survivor satisfies both minimums (the fixed point).
    assert kept.groupby("user_id", observed=True).size().min() >= 5 and kept.groupby("item_id", observed=True).size().min() >= 5


def test_min_count_is_configurable():
    rows = _block("u0", ["i0", "i1"])
    with pytest.raises(DataError, match="no usable rows"):
        _run(rows)
    kept, _, rep = _run(rows, min_user_count=1, min_item_count=1)
    assert rep.rows_kept == 2


def test_missing_column_is_an_error():
    with pytest.raises(DataError, match="missing required column"):
        validate(pd.DataFrame({"user_id": ["1"], "item_id": ["2"]}))


def test_no_usable_rows_is_an_error_naming_the_main_reason():
    rows = [{"user_id": f"u{k}", "item_id": "i", "timestamp": "bad", "weight": "1"} for k in range(10)]
    with pytest.raises(DataError, match=r"no usable rows: all 10 rows.*bad_timestamp"):
        validate(pd.DataFrame(rows))


def test_malformed_lines_are_quarantined():
    rows = _good()
    df = pd.DataFrame(rows, dtype=object)
    df["raw_line"] = None
    extra = pd.DataFrame([{"user_id": None, "item_id": None, "timestamp": None, "weight": None, "raw_line": "1,2,3,4,5"}])
    df = pd.concat([df, extra], ignore_index=True)
    kept, q, rep = validate(df)
    assert rep.quarantined["malformed_line"] == 1 and rep.rows_kept == 36
    assert q.iloc[0]["raw_line"] == "1,2,3,4,5"


def test_timestamp_parsing_units_and_dates():
    s = pd.Series(["1600000000", "1600000000000", "1600000000000000", "1600000000000000000",
                   "2020-09-13T12:26:40Z", "2020-09-13 12:26:40", "2020-09-13T14:26:40+02:00", "", "garbage"])
    out = parse_timestamps(s)
    assert np.allclose(out[:7], 1_600_000_000)
    assert out[7:].isna().all()
    dt = pd.Series(pd.to_datetime(["2020-09-13 12:26:40"]))
    assert parse_timestamps(dt).iloc[0] == 1_600_000_000
    assert parse_timestamps(pd.Series(["13/09/2020"]), "%d/%m/%Y").iloc[0] == 1_599_955_200


def test_numeric_and_float_ids_match_string_ids():
    rows = _good()
    df = pd.DataFrame(rows)
    df["user_id"] = df["user_id"].str[1:].astype(float)  # 0.0, 1.0, ... as a Parquet float column would be
    df["timestamp"] = df["timestamp"].astype(np.int64)
    kept, _, rep = validate(df)
    assert rep.rows_kept == 36 and set(kept["user_id"]) == {str(u) for u in range(6)}

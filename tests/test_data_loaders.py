"""Loaders (generic table, MovieLens csv/.dat, whitespace), prepare() end to end, and the CLI error path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import requires_shared, shared_path

from mirec.config import DataConfig, SourceConfig
from mirec.data import Dataset, prepare
from mirec.data.loaders import load_raw
from mirec.errors import DataError

ML_SMALL = shared_path("data", "ml-latest-small")
MIREC = Path(sys.executable).with_name("mirec")


def _grid(n_users=6, n_items=6):
    """(user, item, rating, ts) with every user rating every item: nothing filtered by min counts."""
    return [(u + 1, i + 1, 1 + (u + i) % 5, 978_300_000 + 60 * u + i) for u in range(n_users) for i in range(n_items)]


def _prep(tmp_path: Path, **source) -> tuple[Path, dict]:
    cfg = DataConfig(name="t", source=SourceConfig(**source), out_dir=str(tmp_path / "out"))
    out, _ = prepare(cfg, progress=False)
    return out, json.loads((out / "summary.json").read_text())


def test_movielens_dat_loader(tmp_path):
    lines = [f"{u}::{i}::{r}::{t}" for u, i, r, t in _grid()]
    lines += ["7::1::5", "8::1::5::978300000::extra", "9::2::x::978300000"]  # 2 malformed, 1 bad weight
    (tmp_path / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    movies = [f"{i}::Movie {i} (2000)::{'Comedy|Drama' if i % 2 else 'Action'}" for i in range(1, 7)]
    movies.append("5::Caf\xe9 duplicate::Horror")
    (tmp_path / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")
    raw, items = load_raw(SourceConfig(format="movielens-dat", path=str(tmp_path)))
    assert len(raw) == 39 and raw["raw_line"].notna().sum() == 2
    assert list(items.columns) == ["item_id", "category", "categories"]
    out, s = _prep(tmp_path, format="movielens-dat", path=str(tmp_path / "ratings.dat"))
    assert s["rows_in"] == 39 and s["rows_kept"] == 36
    assert s["quarantined"]["malformed_line"] == 2 and s["quarantined"]["bad_weight"] == 1
    ds = Dataset.load(out)
    assert ds.n_users == 6 and ds.n_items == 6
    assert ds.items.set_index("item_id").loc["1", "categories"] == "Comedy|Drama"
    assert ds.items.set_index("item_id").loc["1", "category"] == "Comedy"
    q = pd.read_parquet(out / "quarantine.parquet")
    assert "8::1::5::978300000::extra" in set(q["raw_line"].dropna())


def test_whitespace_loader(tmp_path):
    lines = [f"{u}\t{i}  {r} {t}" for u, i, r, t in _grid()] + ["", "1 2 3", "user item rating timestamp"]
    p = tmp_path / "u.data"
    p.write_text("\n".join(lines) + "\n")
    out, s = _prep(tmp_path, format="whitespace", path=str(p))
    assert s["rows_in"] == 38 and s["rows_kept"] == 36  # the blank line is not a row
    assert s["quarantined"]["malformed_line"] == 1 and s["quarantined"]["bad_timestamp"] == 1
    assert s["items_without_metadata"] == 0  # no item file: category '(unknown)', not counted missing
    ds = Dataset.load(out)
    assert ds.n_categories == 1 and ds.items["category"].eq("(unknown)").all()


def test_generic_table_with_column_mapping_csv_and_parquet(tmp_path):
    df = pd.DataFrame(_grid(), columns=["uid", "iid", "score", "when"])
    df["when"] = pd.to_datetime(df["when"], unit="s").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    df.to_csv(tmp_path / "log.csv", index=False)
    pd.DataFrame({"iid": range(1, 7), "genre": list("ababab")}).to_parquet(tmp_path / "items.parquet")
    cols = {"user_id": "uid", "item_id": "iid", "timestamp": "when", "weight": "score", "category": "genre"}
    out, s = _prep(tmp_path, format="table", path=str(tmp_path / "log.csv"),
                   items_path=str(tmp_path / "items.parquet"), columns=cols)
    assert s["rows_kept"] == 36 and s["n_categories"] == 2
    ds = Dataset.load(out)
    assert ds.interactions["timestamp"].min() == 978_300_000
    # Parquet input with native dtypes (int ids, datetime timestamps) gives the same dataset.
    df2 = pd.DataFrame(_grid(), columns=["uid", "iid", "score", "when"])
    df2["when"] = pd.to_datetime(df2["when"], unit="s")
    df2.to_parquet(tmp_path / "log.parquet")
    out2 = tmp_path / "out2"
    prepare(DataConfig(source=SourceConfig(format="table", path=str(tmp_path / "log.parquet"), columns=cols,
                                           items_path=str(tmp_path / "items.parquet")), out_dir=str(out2)),
            progress=False)
    a = pd.read_parquet(out / "interactions.parquet").drop(columns="event_ts")
    b = pd.read_parquet(out2 / "interactions.parquet").drop(columns="event_ts")
    pd.testing.assert_frame_equal(a, b)


def test_csv_with_too_many_fields_is_quarantined_not_fatal(tmp_path):
    text = "user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, _, t in _grid()) + "1,2,3,4\n"
    (tmp_path / "x.csv").write_text(text)
    _, s = _prep(tmp_path, format="table", path=str(tmp_path / "x.csv"))
    assert s["rows_in"] == 37 and s["quarantined"]["malformed_line"] == 1


@pytest.mark.parametrize("setup, match", [
    (lambda d: SourceConfig(format="movielens-csv", path=str(d / "nope")), "input file not found"),
    (lambda d: SourceConfig(format="table", path=str(d / "wrong.csv")), r"missing column\(s\) \['user_id'"),
    (lambda d: SourceConfig(format="movielens-csv", path=str(d / "wrong.csv")), r"missing column\(s\) \['userId'"),
    (lambda d: SourceConfig(format="table", path=str(d / "empty.csv")), "cannot read"),
    (lambda d: SourceConfig(format="table", path=str(d / "fake.parquet")), "cannot read"),
    (lambda d: SourceConfig(format="table", path=str(d / "data.json")), "unsupported file type"),
    (lambda d: SourceConfig(format="table", path=str(d)), "is a folder"),
])
def test_unusable_input_raises_data_error(tmp_path, setup, match):
    (tmp_path / "wrong.csv").write_text("a,b\n1,2\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "fake.parquet").write_text("not parquet")
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(DataError, match=match):
        load_raw(setup(tmp_path))


class _Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run `mirec ARGS` in-process through `mirec.cli.run` (the console-script entry point):
    same error handling and exit codes as the installed command, without a new interpreter."""
    from mirec.cli import run

    def call(*args: str) -> _Result:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["mirec", *map(str, args)])
        code = 0
        try:
            run()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return _Result(code, out, err)

    return call


def test_installed_entry_point_error_is_one_line():
    r = subprocess.run([str(MIREC), "data", "prepare", "/nonexistent"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "error: input file not found: /nonexistent"
    assert r.stdout == ""


def test_cli_errors_are_one_line_exit_2(tmp_path, cli):
    (tmp_path / "wrong.csv").write_text("a,b\n1,2\n")
    for args in (["data", "prepare", "/nonexistent"],
                 ["data", "prepare", str(tmp_path / "wrong.csv"), "-o", str(tmp_path / "o")],
                 ["data", "prepare", str(tmp_path / "wrong.csv"), "--format", "table", "--map", "usr=a"],
                 ["data", "prepare", str(tmp_path / "wrong.csv"), "--format", "nope"]):
        r = cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        err = r.stderr.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert "missing column(s)" in cli("data", "prepare", str(tmp_path / "wrong.csv")).stderr


def test_cli_help_explains(cli):
    r = cli("data", "prepare", "--help")
    assert r.returncode == 0
    for word in ("--format", "movielens-dat", "whitespace", "--map", "--min-user-count", "quarantine"):
        assert word in r.stdout


@requires_shared
def test_movielens_small_loader_counts():
    if not (ML_SMALL / "ratings.csv").exists():
        pytest.skip("ml-latest-small is absent from ../shared/data")
    raw, items = load_raw(SourceConfig(format="movielens-csv", path=str(ML_SMALL)))
    assert len(raw) == 100_836
    assert raw["user_id"].nunique() == 610 and raw["item_id"].nunique() == 9_724
    assert len(items) == 9_742 and set(raw["item_id"]) <= set(items["item_id"])
    assert raw.groupby(["user_id", "timestamp"]).size().pipe(lambda s: s[s > 1].sum()) == 23_228


@requires_shared
def test_movielens_small_prepare_cli(tmp_path, cli):
    if not (ML_SMALL / "ratings.csv").exists():
        pytest.skip("ml-latest-small is absent from ../shared/data")
    out = tmp_path / "ml"
    r = cli("data", "prepare", str(ML_SMALL), "-o", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "610" in r.stdout and "9,724" in r.stdout and "100,836" in r.stdout and "item_min_count" in r.stdout
    s = json.loads((out / "summary.json").read_text())
    assert (s["rows_in"], s["users_in"], s["items_in"]) == (100_836, 610, 9_724)
    assert s["rows_kept"] + sum(s["quarantined"].values()) == 100_836
    assert len(pd.read_parquet(out / "quarantine.parquet")) == sum(s["quarantined"].values())
    ds = Dataset.load(out)
    # Same-second ties are ordered by movieId (numeric): the documented stable tie-break.
    inter = ds.interactions
    mid = inter["item_id"].astype(int)
    same = (inter["user_idx"].diff() == 0) & (inter["timestamp"].diff() == 0)
    assert same.sum() > 10_000
    assert (mid.diff()[same] > 0).all()
    assert (ds.items["item_id"].astype(int).diff().dropna() > 0).all()  # item_idx follows movieId


def test_cli_synth_stats_and_yaml_config(tmp_path, cli):
    out = tmp_path / "syn"
    r = cli("data", "synth", "-o", str(out), "--users", "150", "--items", "300", "--categories", "5",
             "--seed", "4", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "quarantined" in r.stdout and (out / "truth" / "user_interests.parquet").exists()
    r = cli("data", "stats", str(out))
    assert r.returncode == 0 and "150 users" in r.stdout, r.stdout + r.stderr
    # DataConfig from YAML (the same models every subsystem loads), PATH/--out override it.
    rows = pd.DataFrame({"u": [f"u{k % 7}" for k in range(49)], "i": [f"i{k // 7}" for k in range(49)],
                         "t": range(49)})
    rows.to_csv(tmp_path / "log.csv", index=False)
    (tmp_path / "data.yaml").write_text(
        "name: mine\nsource:\n  format: table\n  path: ignored.csv\n  columns: {user_id: u, item_id: i, timestamp: t}\n"
        "split: {kind: temporal}\nmin_item_count: 3\n")
    r = cli("data", "prepare", str(tmp_path / "log.csv"), "-c", str(tmp_path / "data.yaml"), "-o", str(tmp_path / "y"),
             "--no-progress")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "y" / "dataset.json").read_text())
    assert meta["name"] == "mine" and meta["split"] == "temporal" and meta["config"]["min_item_count"] == 3
    (tmp_path / "bad.yaml").write_text("source:\n  fromat: table\n")
    r = cli("data", "prepare", "-c", str(tmp_path / "bad.yaml"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "fromat" in r.stderr


@pytest.mark.parametrize("name, sep, compression", [("log.tsv", "\t", None), ("log.csv.gz", ",", "gzip")])
def test_table_tsv_and_compressed(tmp_path, name, sep, compression):
    df = pd.DataFrame(_grid(), columns=["user_id", "item_id", "weight", "timestamp"])
    df.to_csv(tmp_path / name, sep=sep, index=False, compression=compression)
    raw, _ = load_raw(SourceConfig(format="table", path=str(tmp_path / name), columns={"weight": "weight"}))
    assert len(raw) == 36 and raw["weight"].astype(float).sum() == df["weight"].sum()

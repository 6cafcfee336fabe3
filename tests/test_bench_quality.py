"""benchmarks/quality.py: any prepared dataset, runs = split seed x init seed, the JSON shape other tools read,
resume from the runs file, variants."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mirec.config import DataConfig, SynthConfig
from mirec.data import prepare

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tinyset"
    prepare(DataConfig(name="tinyset", out_dir=str(out),
                       synth=SynthConfig(n_users=120, n_items=150, n_categories=5, seq_len=(10, 20))), progress=False)
    return out


def _bench(*args):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_quality_benchmark_shape_resume_and_variants(tiny, tmp_path):
    out = tmp_path / "q.json"
    args = ["--data", str(tiny), "--models", "popularity,mind,comirec_sa+sampled", "--configs", "default,tuned",
            "--tuned", str(tmp_path / "none"), "--runs", "2", "--set", "train.epochs=1",
            "--set", "train.samples_per_epoch=256", "--set", "model.dim=8", "--out", str(out)]
    r = _bench(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    rows = {(x["dataset"], x["model"], x["config"]): x for x in res["rows"]}
    assert set(rows) == {("tinyset", m, "default") for m in ("popularity", "mind", "comirec_sa+sampled")}
    for row in rows.values():  # the shape issue 13 fixes (more keys are fine)
        for k in ("dataset", "model", "config", "runs", "recall@50", "recall@50_std", "ndcg@50", "hitrate@50",
                  "diversity@50", "samples_per_s"):
            assert k in row, k
        assert row["runs"] == 2 and 0 <= row["recall@50"] <= 1
    assert rows[("tinyset", "mind", "default")]["samples_per_s"] > 0
    seeds = {(x["model"], x["run"]): x["split_seed"] for x in res["runs"]}
    assert seeds[("mind", 0)] != seeds[("mind", 1)]  # each run its own split
    assert "no tuned config" in r.stdout and out.with_suffix(".md").exists() and out.with_suffix(".png").exists()
    again = _bench(*args)  # resumes: nothing left to run
    assert again.returncode == 0 and "0 runs to do (6 already done" in again.stdout
    bad = _bench("--data", str(tiny), "--models", "mind+nope", "--out", str(tmp_path / "b.json"))
    assert bad.returncode != 0 and "unknown variant 'nope'" in bad.stderr


def test_ml100k_atomic_files_convert_to_the_movielens_layout(tmp_path):
    """benchmarks/public_data.py: RecBole's atomic ml-100k files -> ratings.csv + movies.csv that
    `mirec data prepare -f movielens-csv` reads (primary genre = category). No network: crafted files."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from public_data import convert_ml100k

    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    inter += "".join(f"{u}\t{i}\t{(u + i) % 5 + 1}\t{880000000 + 10 * u + i}\n" for u in range(1, 21) for i in range(1, 7))
    item = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
            "1\tToy Story\t1995\tAnimation Children's Comedy\n2\tGoldenEye\t1995\tAction Adventure Thriller\n"
            "3\tFour Rooms\t1995\tThriller\n4\tGet Shorty\t1995\tAction Comedy Drama\n5\tCopycat\t1995\t\n"
            "6\tShanghai Triad\t1995\tDrama\n")
    raw = tmp_path / "ml-100k"
    assert convert_ml100k(inter, item, raw) == {"ratings": 120, "items": 6}
    out = tmp_path / "prepared"
    prepare(DataConfig(name="ml-100k", out_dir=str(out), source={"format": "movielens-csv", "path": str(raw)}),
            progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_kept"] == 120 and summary["n_items"] == 6 and summary["n_categories"] == 5
    items = __import__("pandas").read_parquet(out / "items.parquet")
    assert set(items["category"].astype(str)) == {"Animation", "Action", "Thriller", "Drama", "(no genres listed)"}


def test_bookcrossing_dump_converts_to_the_movielens_layout(tmp_path):
    """benchmarks/public_data.py: the BX-CSV-Dump (';'-separated, quoted, no time, ratings 0 = implicit) ->
    explicit ratings with a random per-user order as timestamps 1..n, publisher as the category; a malformed row
    is passed on for `mirec data prepare` to quarantine and count. No network: crafted files."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from public_data import BX_UNKNOWN_PUBLISHER, convert_bookcrossing

    isbns = [f"00000000{i:02d}" for i in range(8)]
    lines = ['"User-ID";"ISBN";"Book-Rating"']
    lines += [f'"{u}";"{isbns[i]}";"{(u + i) % 10 + 1}"' for u in range(1, 13) for i in range(6)]  # 72 explicit
    lines += [f'"{u}";"{isbns[7]}";"0"' for u in range(1, 13)]  # implicit: left out, counted
    lines += ['"99";"0000000001"']  # malformed: 2 fields
    books = ['"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher"']
    books += [f'"{isbns[i]}";"Book {i}";"A";"2000";"{"Tor  Books" if i % 2 else "Harlequin"}"' for i in range(5)]
    raw = tmp_path / "book-crossing"
    counts = convert_bookcrossing("\r\n".join(lines) + "\r\n", "\r\n".join(books) + "\r\n", raw)
    assert counts == {"ratings": 72, "users": 12, "items": 6, "implicit_rows_left_out": 12, "malformed_rows": 1,
                      "items_without_publisher": 1}
    pd = __import__("pandas")
    ratings = pd.read_csv(raw / "ratings.csv", dtype=str)
    explicit = ratings.dropna(subset=["timestamp"])
    assert len(explicit) == 72 and (explicit["rating"].astype(int) > 0).all()
    orders = explicit.groupby("userId")["movieId"].apply(list)
    assert all(sorted(o) == isbns[:6] for o in orders)  # each user's six books, timestamps 1..6
    assert any(o != isbns[:6] for o in orders)  # in a random order, not the file's (ISBN) order
    assert set(explicit.groupby("userId")["timestamp"].apply(lambda t: tuple(sorted(t.astype(int))))) == {
        (1, 2, 3, 4, 5, 6)}
    movies = pd.read_csv(raw / "movies.csv", dtype=str).set_index("movieId")["genres"]
    assert movies[isbns[1]] == "tor books" and movies[isbns[0]] == "harlequin" and movies[isbns[5]] == BX_UNKNOWN_PUBLISHER
    out = tmp_path / "prepared"
    prepare(DataConfig(name="book-crossing", out_dir=str(out), source={"format": "movielens-csv", "path": str(raw)}),
            progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_kept"] == 72 and summary["n_items"] == 6 and summary["n_categories"] == 3
    bad = {k: v for k, v in summary["quarantined"].items() if v and not k.endswith("_min_count")}
    assert sum(bad.values()) == 1, summary["quarantined"]  # the malformed row: kept aside with its reason

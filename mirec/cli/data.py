"""`mirec data prepare | synth | stats`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mirec.config import DataConfig, SourceConfig, load_yaml_config

app = typer.Typer(no_args_is_help=True)

FORMAT_HELP = ("Input format: table (generic CSV/Parquet + --map), movielens-csv (folder with ratings.csv, "
               "movies.csv), movielens-dat (ml-1m '::' files), whitespace ('user item rating timestamp').")


def _parse_map(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise typer.BadParameter(f"--map takes canonical=source pairs, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _print_report(out: Path) -> None:
    summary = json.loads((out / "summary.json").read_text())
    typer.echo(f"dataset written to {out}")
    typer.echo(f"  rows in {summary['rows_in']:,}  kept {summary['rows_kept']:,}  "
               f"users {summary['users_in']:,} -> {summary['users_kept']:,}  "
               f"items {summary['items_in']:,} -> {summary['items_kept']:,}")
    q = summary["quarantined"]
    typer.echo(f"  quarantined {sum(q.values()):,} rows -> {out / 'quarantine.parquet'}")
    for reason, n in q.items():
        if n:
            typer.echo(f"    {reason:<16}{n:>10,}")
    typer.echo(f"  categories {summary['n_categories']}  splits {summary['splits']}")
    if summary.get("items_without_metadata"):
        typer.echo(f"  items without metadata: {summary['items_without_metadata']:,} (category '(unknown)')")


@app.command()
def prepare(
    path: Optional[Path] = typer.Argument(None, help="Input file or folder. Omit to use the embedded synthetic data."),
    fmt: str = typer.Option("movielens-csv", "--format", "-f", help=FORMAT_HELP),
    out: Path = typer.Option(Path("artifacts/data/prepared"), "--out", "-o", help="Output dataset folder."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="DataConfig YAML (overrides the flags' defaults)."),
    items: Optional[Path] = typer.Option(None, "--items", help="Item metadata file (category column)."),
    map_: list[str] = typer.Option([], "--map", help="Column mapping for --format table, e.g. --map user_id=uid --map timestamp=ts."),
    min_user_count: int = typer.Option(5, help="Drop (quarantine) users with fewer events, iterated with items."),
    min_item_count: int = typer.Option(5, help="Drop (quarantine) items with fewer events."),
    split: str = typer.Option("comirec", help="comirec (users 8:1:1, 80/20 per eval user) or temporal."),
    seed: int = typer.Option(2021, help="Split seed."),
) -> None:
    """Validate raw interactions, quarantine bad rows (with reasons), map ids, split, write Parquet."""
    from mirec.data import prepare as run_prepare

    if config is not None:
        cfg = load_yaml_config(DataConfig, config)
    else:
        src = SourceConfig(format="synthetic") if path is None else SourceConfig(
            format=fmt, path=str(path), items_path=str(items) if items else None,
            columns=_parse_map(map_))
        cfg = DataConfig(name=(path.stem if path else "synthetic"), source=src, out_dir=str(out),
                         min_user_count=min_user_count, min_item_count=min_item_count,
                         split={"kind": split, "seed": seed})
    out_dir, _ = run_prepare(cfg)
    _print_report(out_dir)


@app.command()
def synth(
    out: Path = typer.Option(Path("artifacts/data/synthetic"), "--out", "-o"),
    users: int = typer.Option(2000, help="Number of users."),
    items: int = typer.Option(5000, help="Number of items (up to 10^6)."),
    categories: int = typer.Option(20, help="Number of item categories (planted interests)."),
    seed: int = typer.Option(0),
) -> None:
    """Generate the synthetic multi-interest set (planted interests saved as ground truth) and prepare it."""
    from mirec.data import prepare as run_prepare

    cfg = DataConfig(name="synthetic", out_dir=str(out),
                     synth={"n_users": users, "n_items": items, "n_categories": categories, "seed": seed})
    out_dir, _ = run_prepare(cfg)
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

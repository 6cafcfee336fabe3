"""`mirec features apply | materialize | lookup | training` (thin: logic in mirec.features)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=True)

REPO = typer.Option(None, "--repo", help="Feature repo folder (env MIREC_FEAST_REPO; default feature_repo).")
PROFILE = typer.Option(None, "--profile", help="local | production (env MIREC_FEAST_PROFILE; default local).")
STORE_DIR = typer.Option(None, "--store-dir",
                         help="Folder for registry.db/online_store.db (env MIREC_FEAST_DIR; default <repo>/data).")
SOURCE_DIR = typer.Option(None, "--source-dir",
                          help="Where the derived Parquet sources go (env MIREC_FEAST_SOURCE_DIR; "
                               "default <store-dir>/sources; s3://... for an object store).")


def _cfg(repo, profile, store_dir, source_dir=None, **kw):
    from mirec.features.config import FeaturesConfig

    return FeaturesConfig(repo_path=str(repo) if repo else None, profile=profile,
                          store_dir=str(store_dir) if store_dir else None,
                          source_dir=str(source_dir) if source_dir else None, **kw)


def _when(s: Optional[str], name: str) -> Optional[datetime]:
    if s is None:
        return None
    import pandas as pd

    try:
        return pd.Timestamp(s).to_pydatetime()
    except Exception:
        raise typer.BadParameter(f"{name}: not a date/time: {s!r} (use ISO-8601, e.g. 2024-01-31T00:00:00Z)")


@app.command()
def apply(
    data: Path = typer.Option(..., "--data", "-d", help="Prepared dataset folder (mirec data prepare/synth)."),
    repo: Optional[Path] = REPO, profile: Optional[str] = PROFILE, store_dir: Optional[Path] = STORE_DIR,
    source_dir: Optional[str] = SOURCE_DIR,
    seq_len: int = typer.Option(50, "--seq-len", "-L", help="Recent items kept per user snapshot."),
    window_days: int = typer.Option(7, "--window-days", help="Item popularity window (days)."),
) -> None:
    """Write the derived feature sources from DATA and register the feature definitions."""
    from mirec.features.store import apply as run_apply

    meta = run_apply(data, _cfg(repo, profile, store_dir, source_dir, seq_len=seq_len,
                                pop_window_days=window_days), log=typer.echo)
    typer.echo(json.dumps(meta["counts"]))


@app.command()
def materialize(
    repo: Optional[Path] = REPO, profile: Optional[str] = PROFILE, store_dir: Optional[Path] = STORE_DIR,
    incremental: bool = typer.Option(False, "--incremental", "-i",
                                     help="From each view's last materialized end (first time: everything)."),
    start: Optional[str] = typer.Option(None, help="Window start, ISO-8601 UTC (default: 1970)."),
    end: Optional[str] = typer.Option(None, help="Window end, ISO-8601 UTC (default: now)."),
    view: list[str] = typer.Option([], "--view", help="Only these feature views (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the per-view report as JSON."),
    feast_output: bool = typer.Option(False, "--feast-output", help="Also show Feast's own progress bars."),
) -> None:
    """Load features into the online store (by time window, or incrementally), with row counts."""
    from mirec.features.store import materialize as run

    if incremental and start:
        raise typer.BadParameter("--start and --incremental exclude each other")
    reports = run(_cfg(repo, profile, store_dir), start=_when(start, "--start"), end=_when(end, "--end"),
                  incremental=incremental, views=view or None, log=(lambda s: None) if as_json else typer.echo,
                  quiet_feast=not feast_output)
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in reports], indent=2))
    else:
        total = sum(r.rows for r in reports)
        secs = sum(r.seconds for r in reports)
        typer.echo(f"materialized {len(reports)} view(s): {total:,} source rows, "
                   f"{sum(r.entities for r in reports):,} entities written, {secs:.1f}s")


@app.command()
def lookup(
    user_ids: list[str] = typer.Argument(..., help="External user ids."),
    repo: Optional[Path] = REPO, profile: Optional[str] = PROFILE, store_dir: Optional[Path] = STORE_DIR,
    timeout_ms: float = typer.Option(2000, help="Deadline of the lookup (serving uses ~50 ms)."),
) -> None:
    """Print each user's recent items (external ids, oldest -> newest) from the online store, as JSON."""
    from mirec.errors import MirecError
    from mirec.features.online import FeatureStoreUnavailable, OnlineHistoryClient

    cfg = _cfg(repo, profile, store_dir).resolved()
    client = OnlineHistoryClient(cfg.repo_path, timeout_ms=timeout_ms, profile=cfg.profile,
                                 store_dir=cfg.store_dir, warmup=True,
                                 warmup_timeout_ms=max(60_000.0, timeout_ms))
    try:
        out = client.recent_items(user_ids)
    except FeatureStoreUnavailable as exc:
        raise MirecError(f"online store unavailable: {exc}") from None
    typer.echo(json.dumps(out, indent=2))


@app.command()
def training(
    labels: Path = typer.Option(..., "--labels", help="Parquet/CSV with user_id and event_ts or timestamp (s)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output Parquet."),
    repo: Optional[Path] = REPO, profile: Optional[str] = PROFILE, store_dir: Optional[Path] = STORE_DIR,
) -> None:
    """Point-in-time training rows: each label's sequence as of just before its time (no row lost)."""
    import pandas as pd

    from mirec.errors import DataError
    from mirec.features.store import training_frame

    if not labels.is_file():
        raise DataError(f"labels file not found: {labels}")
    df = pd.read_csv(labels) if labels.suffix == ".csv" else pd.read_parquet(labels)
    res = training_frame(df, _cfg(repo, profile, store_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    res.to_parquet(out, index=False)
    typer.echo(f"{len(res):,} training rows (as many as labels) -> {out}; "
               f"{int((res['seq_len'] == 0).sum()):,} with no history")

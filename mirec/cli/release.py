"""`mirec release`: fetch | publish | show — the release store (mirec.release.store) from the command line.

The chart's containers run `mirec release fetch` before anything uses a release: the model fetcher (init container
of the serving pods: `--part model-store --strip`), the monitoring CronJob (`--part reference`)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("fetch")
def fetch_cmd(
    uri: str = typer.Option(..., "--uri", envvar="MIREC_RELEASE_URI",
                            help="The release: <store>/<release>/<version> (s3://, gs://, file://, a path)."),
    dest: Path = typer.Option(..., "--dest", help="Folder to download into."),
    part: list[str] = typer.Option([], "--part", help="Only these files/folders of the release (repeatable), "
                                   "e.g. model-store, reference. Default: everything."),
    strip: bool = typer.Option(False, "--strip", help="With one --part folder: its files land directly in DEST."),
) -> None:
    """Download (parts of) a release and verify every file's sha256 against its release.json; exit 2 naming the
    file on a mismatch, a missing file or no release at URI."""
    from mirec.release import fetch_release

    m = fetch_release(uri, dest, parts=part, strip_part=strip)
    n = sum(1 for f in m.files if not part or any(f.path == p or f.path.startswith(p.rstrip("/") + "/") for p in part))
    typer.echo(f"fetched {n} verified file(s) of release {m.release}/{m.version} from {uri} into {dest}")


@app.command("publish")
def publish_cmd(
    release_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="A release folder with release.json "
                                       "(the deploy step's `release/`)."),
    uri: str = typer.Option(..., "--uri", help="Where to publish it: <store>/<release>/<version>."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing release (normally refused)."),
) -> None:
    """Upload a release folder; release.json goes last."""
    from mirec.release import publish_release

    m = publish_release(release_dir, uri, overwrite=overwrite)
    typer.echo(f"published {len(m.files)} file(s) of release {m.release}/{m.version} to {uri}")


@app.command("show")
def show_cmd(uri: str = typer.Option(..., "--uri", envvar="MIREC_RELEASE_URI")) -> None:
    """Print a release's manifest (models, A/B split, files)."""
    from mirec.release import read_manifest

    typer.echo(read_manifest(uri).model_dump_json(indent=2))

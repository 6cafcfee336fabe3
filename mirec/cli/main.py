"""`mirec main`: the README's main job (grows into the full local Kubeflow pipeline run)."""

from __future__ import annotations

from pathlib import Path

import typer


def main(
    out: Path = typer.Option(Path("artifacts"), "--out", "-o", help="Where all artifacts of the run land."),
) -> None:
    """Run the main job end to end on the embedded synthetic data."""
    from mirec.cli.data import _print_report
    from mirec.config import DataConfig
    from mirec.data import prepare

    cfg = DataConfig(out_dir=str(out / "data" / "synthetic"))
    out_dir, _ = prepare(cfg)
    _print_report(out_dir)


COMMANDS: list[dict] = [{"fn": main, "kwargs": {"name": "main"}}]

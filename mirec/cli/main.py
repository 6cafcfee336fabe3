"""`mirec main`: the README's main job — the training pipeline end to end with kfp's local runner."""

from __future__ import annotations

from pathlib import Path

import typer


def main(
    out: Path = typer.Option(Path("artifacts"), "--out", "-o", help="Where all artifacts of the run land."),
    tiny: bool = typer.Option(False, "--tiny", help="Small synthetic data, 1 epoch: a smoke run of ~2-3 minutes."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Show kfp's per-task output in the terminal (default: <out>/pipeline_root/last-run.log)."),
) -> None:
    """Run the main job on the embedded synthetic data: ingest + validate -> Feast apply/materialize ->
    point-in-time training data -> train candidates A (MIND) and B (ComiRec-SA) -> evaluate -> gate ->
    package MARs -> monitoring reference -> deploy values; then print where everything is and who won.

    Same pipeline as `mirec pipeline run --local` (see `mirec pipeline run --help` for parameters)."""
    from mirec.cli.pipeline import TINY_PARAMS, run_main

    run_main(dict(TINY_PARAMS) if tiny else {}, pipeline_root=out / "pipeline_root", quiet=not verbose,
             echo=typer.echo)


COMMANDS: list[dict] = [{"fn": main, "kwargs": {"name": "main"}}]

"""The `mirec` command line: one app, one sub-app file per subsystem.

Errors caused by input (MirecError) print as one line and exit 2, never as a traceback.
"""

from __future__ import annotations

import sys

import typer

from mirec.errors import MirecError

app = typer.Typer(
    name="mirec",
    help="mirec: multi-interest recommendation from interaction logs to a monitored, A/B-tested service.\n\n"
    "Start with `mirec main` (the whole pipeline on the embedded synthetic data), or "
    "`mirec data prepare --help` to bring your own data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    # Imported here so that `mirec --help` stays fast and a broken optional part names itself.
    from mirec.cli import ab, data, features, main, models, monitor, pipeline, release, serve, tune

    app.add_typer(data.app, name="data", help="Prepare, synthesise and inspect interaction data.")
    app.add_typer(features.app, name="features", help="Feast feature repo: apply, materialize, lookup.")
    app.add_typer(pipeline.app, name="pipeline", help="Kubeflow pipelines: compile, run locally, submit.")
    app.add_typer(release.app, name="release", help="Releases: fetch (verified), publish, show.")
    app.add_typer(ab.app, name="ab", help="A/B tests: the outcome report (CIs, sequential test, SRM) and promotion.")
    for mod in (models, serve, monitor, main, tune):
        for cmd in mod.COMMANDS:
            app.command(**cmd.get("kwargs", {}))(cmd["fn"])


_register()


def run() -> None:
    try:
        app()
    except MirecError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    run()

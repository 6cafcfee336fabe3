"""`mirec features` (filled in by its subsystem)."""

import typer

app = typer.Typer(no_args_is_help=True)

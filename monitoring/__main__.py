"""`python -m monitoring --reference ... --log ... --since 1h --out ...` == `mirec monitor ...`."""

import sys

import typer

from mirec.cli.monitor import monitor
from mirec.errors import MirecError


def main() -> None:
    try:
        typer.run(monitor)
    except MirecError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

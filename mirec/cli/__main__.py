"""`python -m mirec.cli ...` (what `torchrun -m mirec.cli pipeline train-worker ...` runs) = the `mirec` command."""

from mirec.cli import run

run()

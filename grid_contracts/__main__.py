"""`python -m grid_contracts` runs the grid-contracts command."""

from grid_contracts.cli import app

app()

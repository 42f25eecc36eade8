"""``python -m autopack`` is the ``autopack`` command."""

from autopack.cli import run

run()

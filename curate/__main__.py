"""``python -m curate``: the command line."""

from curate.engine.cli import main

main()

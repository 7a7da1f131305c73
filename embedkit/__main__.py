"""``python -m embedkit``: the same command line as the ``embedkit`` script."""

from embedkit.cli import main

main()

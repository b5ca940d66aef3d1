"""``python -m clipseg_cli`` runs the command line."""

from clipseg_cli.cli import main

main()

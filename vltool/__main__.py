"""``python -m vltool`` runs the command line."""

from vltool.cli.app import main

main()

"""`python -m nacosae` runs the CLI."""

from nacosae.cli import main

main()

"""`python -m lightfit <command> ...`: the same as the `lightfit` command."""

from lightfit.cli import main

main()

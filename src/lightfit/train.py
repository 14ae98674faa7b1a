"""`python -m lightfit.train [overrides]`: the same as `lightfit train` (kept for old commands)."""

from lightfit.cli.train import main

if __name__ == "__main__":
    main()

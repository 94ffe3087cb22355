"""`python scripts/compare.py` is `trl-powerflow compare` (trl_powerflow/cli/compare.py)."""

from trl_powerflow.cli.compare import main

if __name__ == "__main__":
    main()

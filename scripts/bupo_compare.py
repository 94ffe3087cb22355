"""`python scripts/bupo_compare.py` is `trl-powerflow bupo-compare` (trl_powerflow/cli/bupo_compare.py)."""

from trl_powerflow.cli.bupo_compare import main

if __name__ == "__main__":
    main()

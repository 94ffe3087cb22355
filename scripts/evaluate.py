"""`python scripts/evaluate.py` is `trl-powerflow evaluate` (trl_powerflow/cli/evaluate.py)."""

from trl_powerflow.cli.evaluate import main

if __name__ == "__main__":
    main()

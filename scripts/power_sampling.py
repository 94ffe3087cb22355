"""`python scripts/power_sampling.py` is `trl-powerflow power-sampling` (trl_powerflow/cli/power_sampling.py)."""

from trl_powerflow.cli.power_sampling import main

if __name__ == "__main__":
    main()

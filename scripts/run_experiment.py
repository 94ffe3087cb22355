"""`python scripts/run_experiment.py` is `trl-powerflow experiment` (trl_powerflow/cli/experiment.py)."""

from trl_powerflow.cli.experiment import main

if __name__ == "__main__":
    main()

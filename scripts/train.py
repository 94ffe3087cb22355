"""`python scripts/train.py` is `trl-powerflow train` (trl_powerflow/cli/train.py; `--help` lists the options)."""

from trl_powerflow.cli.train import run

if __name__ == "__main__":
    run()

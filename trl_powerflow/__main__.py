"""`python -m trl_powerflow <command> ...`: the `trl-powerflow` command (see `trl_powerflow.cli`)."""

from trl_powerflow.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""`python scripts/make_tiny_model.py` is `trl-powerflow make-tiny-model` (trl_powerflow/cli/make_tiny_model.py)."""

from trl_powerflow.cli.make_tiny_model import main

if __name__ == "__main__":
    main()

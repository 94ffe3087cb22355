"""`python scripts/pretrain_tiny_base.py` is `trl-powerflow pretrain-base` (trl_powerflow/cli/pretrain_base.py)."""

from trl_powerflow.cli.pretrain_base import main

if __name__ == "__main__":
    main()

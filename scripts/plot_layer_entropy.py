"""`python scripts/plot_layer_entropy.py` is `trl-powerflow plot-layer-entropy` (trl_powerflow/cli/)."""

from trl_powerflow.cli.plot_layer_entropy import main

if __name__ == "__main__":
    main()

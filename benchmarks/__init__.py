"""The PowerFlow benchmarks, run as modules from the repository root (`python -m benchmarks.step_cost --quick`).

Not part of the installed package (pyproject's `packages.find` includes only `trl_powerflow*`). Shared pieces:
`_bench` (the timing harness: worker processes interleaved step by step), `_arms` (the arms, their trainers and tiny
models), `_report` (statistics, machine info, command line and output files) and `_variants` (benchmark-only
trainer subclasses).
"""

# Developer shortcuts. `make test-all` is exactly what CI runs (the README's test command, in a fresh .venv).
PY ?= .venv/bin/python
export OMP_NUM_THREADS = 1

.PHONY: test test-all lint format bench-quick

test:  ## fast inner loop: everything but the slow, multi-process and vLLM tests
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow and not distributed and not vllm"

test-all:  ## the README's test command (what .ci/run runs)
	bash .ci/run

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check trl_powerflow tests

format:
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format trl_powerflow tests

bench-quick:  ## every benchmark in its --quick mode
	for b in step_cost waste convergence loss_cost; do $(PY) -m benchmarks.$$b --quick --out outputs/bench-quick/$$b || exit 1; done

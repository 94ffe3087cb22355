#!/usr/bin/env bash
# GPU check of trl_powerflow, for one lent H100/H200 (no internet there; torch, transformers 5.17, accelerate, peft,
# pyarrow, pytest(-xdist) preinstalled). Ends in about 7.5 minutes: GPU_CHECK_BUDGET_S (default 430 s), and 475 s at
# worst (a slow first timed round of the benchmark may run 30 s past its deadline; hard limit 35 s past the budget):
#   1. installs the wheels carried in benchmarks/gpu_wheels/ (made here by benchmarks/make_gpu_wheels.sh) offline,
#      --no-deps, and the project with `pip install --no-deps -e .` (PYTHONPATH fallback);
#   2. runs the core tests on CUDA in bf16 (POWERFLOW_TEST_DEVICE=cuda: read by tests/helpers.py when it has the
#      switch, else applied by benchmarks/_gpu_pytest_plugin.py), then reruns the failures in float32 on CUDA;
#   3. runs `python -m benchmarks.gpu_step_cost`: PowerFlow vs GRPO(beta>0) vs GRPO(beta=0), interleaved, on a
#      random Qwen2.5-0.5B-shaped model in bf16, 8 generations of 512 tokens, for the time that is left;
#   4. writes $OUT/gpu.md and $OUT/gpu.json (`python -m benchmarks.gpu_report`), beside gpu_check.log,
#      pytest_cuda_*.xml and gpu_step_cost.{json,md}.
# The benchmarks are a package run as modules from the repository root (this script cd's there).
# Device tool: command "bash benchmarks/gpu_check.sh", carry ["benchmarks/gpu_wheels"], timeout_s 540.
# Exit code: 0 when the report was written (the report says what passed), 1 otherwise.
# GPU_CHECK_DRY_RUN=1: the same flow on a CPU, for checking this script (wheels with --target into a temp dir, no
# editable install, tests with POWERFLOW_TEST_DEVICE=cpu, a tiny step-cost run); e.g.
#   GPU_CHECK_DRY_RUN=1 GPU_CHECK_TESTS=tests/test_losses.py OUT=/tmp/dry PYTHON=.venv/bin/python \
#       bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
REPO=$(pwd)
T0=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-430}
OUT=${OUT:-$REPO/outputs/gpu_check}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
PY=${PYTHON:-python3}
WHEELS=${GPU_WHEELS:-benchmarks/gpu_wheels}
CORE_TESTS="tests/test_losses.py tests/test_trainer.py tests/test_drop_in.py tests/test_exact_fixed_point.py"
TEST_FILES=${GPU_CHECK_TESTS:-$CORE_TESTS}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
export TOKENIZERS_PARALLELISM=false PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
DRY=${GPU_CHECK_DRY_RUN:-0}
DEVICE=cuda
BENCH_ARGS=()
if [ "$DRY" = 1 ]; then
    DEVICE=cpu
    BENCH_ARGS=(--shape tiny --completion-length 8 --num-generations 2 --max-steps 2)
fi

elapsed() { echo $(($(date +%s) - T0)); }
left() { echo $((BUDGET - $(elapsed))); }
phase() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$WORK/phases.tsv"; } # name seconds rc note
say() { echo "[gpu_check $(elapsed)s] $*"; }

say "repo $REPO, OUT $OUT, work $WORK, budget ${BUDGET}s, python $($PY -c 'import sys; print(sys.version.split()[0])')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || say "nvidia-smi failed"
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
say "card: ${GPU_NAME:-unknown}"

# ------------------------------------------------------------------------------------------------- 1. install
t=$(date +%s)
PKGS=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 math-verify==0.9.0
    latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2)
# datasets 5.2.0 caps fsspec at 2026.9.0: bring the carried one only when the image's is newer (or missing).
if ! $PY - <<'EOF'; then
import sys
from importlib.metadata import version
from packaging.version import Version
try:
    sys.exit(0 if Version(version("fsspec")) <= Version("2026.9.0") else 1)
except Exception:
    sys.exit(1)
EOF
    PKGS+=(fsspec==2026.9.0)
fi
PIP_ARGS=(-q --no-index --find-links "$WHEELS" --no-deps --no-compile)
install_rc=0
install_note=""
if [ ! -d "$WHEELS" ]; then
    install_rc=1
    install_note="no wheel folder $WHEELS (carry it: carry=[\"benchmarks/gpu_wheels\"])"
elif [ "$DRY" != 1 ] && $PY -m pip install "${PIP_ARGS[@]}" "${PKGS[@]}"; then
    install_note="wheels into $($PY -c 'import sys; print(sys.prefix)'): ${PKGS[*]}"
else
    [ "$DRY" = 1 ] || say "install into the interpreter's environment failed; retrying with --target $WORK/site"
    if $PY -m pip install "${PIP_ARGS[@]}" --target "$WORK/site" "${PKGS[@]}"; then
        export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
        install_note="wheels into --target $WORK/site (PYTHONPATH): ${PKGS[*]}"
    else
        install_rc=1
        install_note="pip install of the carried wheels failed: ${PKGS[*]}"
    fi
fi
if [ "$DRY" != 1 ] &&
    $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$WORK/editable.log" 2>&1; then
    install_note="$install_note
project: pip install --no-deps -e . (no build isolation)"
else
    [ -f "$WORK/editable.log" ] && tail -5 "$WORK/editable.log"
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    install_note="$install_note
project: editable install failed (see log), imported from PYTHONPATH=$REPO"
fi
echo "$install_note" >"$WORK/install.txt"
if $PY -c "
import torch, transformers, trl, datasets, trl_powerflow
from trl import GRPOConfig, GRPOTrainer
from trl_powerflow import PowerFlowConfig, PowerFlowTrainer
print('imports ok: torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__,
      'datasets', datasets.__version__, 'cuda', torch.cuda.is_available())
assert torch.cuda.is_available() or '$DRY' == '1', 'torch sees no GPU'
"; then import_rc=0; else import_rc=1; fi
phase install $(($(date +%s) - t)) $((install_rc + import_rc)) "import check rc $import_rc"

# ------------------------------------------------------------------------------------------------- 2. tests
if grep -q POWERFLOW_TEST_DEVICE tests/helpers.py; then
    echo "tests/helpers.py reads POWERFLOW_TEST_DEVICE (switch in the helpers)" >"$WORK/switch.txt"
else
    export POWERFLOW_GPU_PATCH_HELPERS=1
    echo "tests/helpers.py has no POWERFLOW_TEST_DEVICE switch: benchmarks/_gpu_pytest_plugin.py wraps" \
        "powerflow_args" \
        "(use_cpu=False, bf16 per POWERFLOW_TEST_BF16 unless the test passes them)" >"$WORK/switch.txt"
fi
echo "POWERFLOW_TEST_DEVICE=$DEVICE" >>"$WORK/switch.txt"
echo "$TEST_FILES" >"$WORK/test_files.txt"
export POWERFLOW_TEST_DEVICE=$DEVICE
XDIST=()
if $PY -c "import xdist" 2>/dev/null; then XDIST=(-n "${GPU_CHECK_WORKERS:-8}"); fi
PER_TEST=()
if $PY -c "import pytest_timeout" 2>/dev/null; then PER_TEST=(--timeout "${GPU_CHECK_TEST_TIMEOUT_S:-120}"); fi
run_tests() { # pass-name bf16(0/1) wall-limit extra-args...
    local name=$1 bf16=$2 limit=$3
    shift 3
    local t rc
    t=$(date +%s)
    say "tests, $DEVICE $name (limit ${limit}s): $TEST_FILES $*"
    POWERFLOW_TEST_BF16=$bf16 POWERFLOW_GPU_DIAG_DIR="$WORK/diag_$name" \
        PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" \
        timeout -k 10 "$limit" $PY -m pytest -p benchmarks._gpu_pytest_plugin "${XDIST[@]}" "${PER_TEST[@]}" -q -rfE \
        --tb=short \
        --durations=10 -o cache_dir="$WORK/pytest_cache" --junitxml="$OUT/pytest_cuda_$name.xml" \
        $TEST_FILES "$@"
    rc=$?
    phase "tests_$name" $(($(date +%s) - t)) $rc "$([ $rc -eq 124 ] && echo "timed out at ${limit}s")"
    return $rc
}
if [ $import_rc -eq 0 ]; then
    run_tests bf16 1 "${GPU_CHECK_TESTS_LIMIT_S:-150}"
    tests_rc=$?
    if [ $tests_rc -eq 1 ] && [ "$(left)" -gt 250 ]; then
        run_tests fp32 0 $(($(left) - 190 < 60 ? $(left) - 190 : 60)) --lf --lfnf=none
    elif [ $tests_rc -eq 1 ]; then
        phase tests_fp32 0 - "skipped: $(left)s left, kept for the benchmark"
    fi
else
    phase tests 0 - "skipped: imports failed"
fi

# ------------------------------------------------------------------------------------------------- 3. step cost
REPORT_RESERVE=15
bench_left=$(($(left) - REPORT_RESERVE))
if [ $import_rc -ne 0 ]; then
    phase step_cost 0 - "skipped: imports failed"
elif [ "${GPU_CHECK_SKIP_BENCH:-0}" = 1 ]; then
    phase step_cost 0 - "skipped: GPU_CHECK_SKIP_BENCH=1"
elif [ "$bench_left" -lt 90 ]; then
    phase step_cost 0 - "skipped: only ${bench_left}s left"
else
    t=$(date +%s)
    say "step cost, deadline ${bench_left}s"
    # No round starts that would end past the deadline (30 s grace for the first timed round); the hard limit leaves
    # room for that and for the arms to exit.
    # shellcheck disable=SC2086 # GPU_STEP_COST_ARGS: extra options, split on spaces
    timeout -k 5 $((bench_left + 50)) $PY -m benchmarks.gpu_step_cost --device "$DEVICE" --out "$OUT" \
        --deadline-s "$bench_left" --grace-s 30 --model-dir "$WORK/model" "${BENCH_ARGS[@]}" ${GPU_STEP_COST_ARGS:-}
    rc=$?
    phase step_cost $(($(date +%s) - t)) $rc "$([ $rc -eq 124 ] && echo "killed at the hard limit")"
fi

# ------------------------------------------------------------------------------------------------- 4. report
$PY -m benchmarks.gpu_report --out "$OUT" --work "$WORK" >/dev/null
report_rc=$?
say "done in $(elapsed)s; report rc $report_rc: $OUT/gpu.md"
[ $report_rc -eq 0 ] && [ -f "$OUT/gpu.md" ] && cat "$OUT/gpu.md"
sleep 1 # let tee flush the log
[ $report_rc -eq 0 ]

#!/usr/bin/env bash
# Download, here (where PyPI is reachable), the wheels that benchmarks/gpu_check.sh installs offline on the lent GPU
# machine, into benchmarks/gpu_wheels/ (ignored by git; the device tool carries it:
# carry=["benchmarks/gpu_wheels"]).
#
# The GPU machine's image already holds torch 2.11, transformers 5.17, accelerate, peft, pyarrow, pandas, numpy,
# huggingface-hub, fsspec, xxhash, sympy, pyyaml, safetensors, tokenizers, jinja2, psutil, tqdm and pytest(-xdist).
# What the package needs beyond that (see pyproject.toml and the Requires-Dist lines of trl 1.16 and datasets):
#   trl 1.16.0          requires accelerate>=1.10.1 datasets>=4.7.0 transformers>=4.56.2 pyarrow>=21 ... (all there
#                       but datasets), so transformers 5.17 satisfies it
#   datasets 5.2.0      + dill<0.4.2 and multiprocess<0.70.20 (not in the image)
#   fsspec 2026.9.0     only installed there if the image's fsspec is newer than datasets 5.2.0's cap (<=2026.9.0)
#   math-verify 0.9.0   (imported lazily by trl_powerflow.data.answers) + latex2sympy2_extended 1.11.0 + antlr4 4.13.2
# Left out on purpose: deepspeed (sdist only, multi-GPU ZeRO; no core test needs it), torch/transformers/... (there).
# Every wheel here is pure Python; multiprocess ships one wheel per Python minor version, so both cp311 and cp312 are
# fetched (the image's python3 is 3.12 per the device notes; pip picks the matching one). Versions are the ones the
# project's CPU test suite runs with.
#
#   bash benchmarks/make_gpu_wheels.sh          # prints the wheel list and the total size (must be < 64 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=benchmarks/gpu_wheels
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
PINS=(
    trl==1.16.0
    datasets==5.2.0
    dill==0.4.1
    multiprocess==0.70.19
    fsspec==2026.9.0
    math-verify==0.9.0
    latex2sympy2_extended==1.11.0
    antlr4-python3-runtime==4.13.2
)
PLATFORMS=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
rm -rf "$DEST"
mkdir -p "$DEST"
for pyver in 3.12 3.11; do
    for pin in "${PINS[@]}"; do
        "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary :all: \
            --python-version "$pyver" --implementation cp "${PLATFORMS[@]}" -d "$DEST" "$pin"
    done
done
# One version per project (two versions of one project would stop the offline install).
"$PY" - "$DEST" "${PINS[@]}" <<'EOF'
import re
import sys
from pathlib import Path

dest, pins = Path(sys.argv[1]), sys.argv[2:]
want = {re.sub(r"[-_.]+", "_", p.split("==")[0]).lower(): p.split("==")[1] for p in pins}
seen = {}
for wheel in sorted(dest.glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    name = re.sub(r"[-_.]+", "_", name).lower()
    seen.setdefault(name, set()).add(version)
bad = {n: v for n, v in seen.items() if n not in want or v != {want[n]}}
missing = sorted(set(want) - set(seen))
if bad or missing:
    sys.exit(f"unexpected wheels {bad} or missing {missing}")
EOF
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
ls -l "$DEST"
limit=$((64 * 1024 * 1024))
printf 'total: %d bytes (%.2f MiB) in %d wheels; limit %d bytes (64 MiB)\n' \
    "$total" "$(echo "$total / 1048576" | bc -l)" "$(ls "$DEST"/*.whl | wc -l)" "$limit"
if [ "$total" -ge "$limit" ]; then
    echo "ERROR: the wheels exceed 64 MiB" >&2
    exit 1
fi

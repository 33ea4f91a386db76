#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on a GPU machine that has JAX but not this project's
# other packages (no TensorFlow, Keras or imbalanced-learn) and no internet: the packages travel as
# wheels in .whl/, the data as data/ham10000/ (both ignored by git, see .gitignore).
#
#   bash benchmarks/gpu_check.sh prepare     # here, once: the wheels into .whl/ (3 MB), data/ham10000 -> ../shared/ham10000
#   bash benchmarks/gpu_check.sh             # there: installs the wheels, runs the check, writes ${OUT:-.}/gpu_check.json
#
# The check takes at most 8 minutes: about 20 s to install and start, then gpu_check.py's budget
# of 420 s, cut at 470 s whatever happens (its JSON is written after every step).
set -euo pipefail
cd "$(dirname "$0")/.."

# What the GPU machines lack, at the versions this checkout is tested with; Python 3.12 wheels.
WHEELS=(keras==3.15.1 namex==0.1.0 optree==0.20.0 imbalanced-learn==0.14.2 sklearn-compat==0.1.6)

if [[ "${1:-run}" == prepare ]]; then
    mkdir -p .whl data
    "${PYTHON:-python3}" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    [[ -e data/ham10000 ]] || ln -s "$(cd .. && pwd)/shared/ham10000" data/ham10000
    du -shL .whl data/ham10000
    exit 0
fi

python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
status=0
timeout 470 python3 benchmarks/gpu_check.py --data-dir data/ham10000 --output "${OUT:-.}/gpu_check.json" || status=$?
# The trained run's own records, also where the time limit stopped it part-way.
for file in /tmp/gpu_check-*/runs/*/{history.csv,training.json,metrics.json}; do
    if [[ -f "$file" ]]; then cp "$file" "${OUT:-.}/"; fi
done
exit "$status"

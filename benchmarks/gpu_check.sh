#!/usr/bin/env bash
# gpu_check: re-prove the GPU fast path (issue 8) in one command, on a
# machine with a CUDA GPU, Python 3.12, torch and timm, and no network.
#
#   benchmarks/gpu_check.sh [gpu_check.py options, e.g. --profile]
#   benchmarks/gpu_check.sh --missing   # only list the distributions it would install
#
# What cass_ros needs and the machine lacks (open_clip_torch, ftfy, scipy,
# opencv, rosbags ...) is installed from a folder of wheels, without network,
# into a virtual environment that sees the machine's own torch and timm.
# Prepare that folder where PyPI is reachable: `make gpu-wheels` (writes
# benchmarks/wheels/), and bring it along with the repository.
#   CASS_WHEELS   the wheel folder (default benchmarks/wheels)
#   CASS_GPU_VENV where the virtual environment goes (default $TMPDIR/cass_gpu_venv)
#   PYTHON        the interpreter with torch (default python3)
#   GPU_CHECK_TIMEOUT  seconds before the check is stopped (default 480)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${CASS_WHEELS:-benchmarks/wheels}
VENV=${CASS_GPU_VENV:-${TMPDIR:-/tmp}/cass_gpu_venv}

# module -> distribution, for what the library, cass_bag and the check import
missing=$("$PY" - <<'PY'
import importlib.util
need = {"open_clip": "open_clip_torch", "ftfy": "ftfy", "wcwidth": "wcwidth", "regex": "regex",
        "scipy": "scipy", "cv2": "opencv-python-headless", "yaml": "PyYAML", "tqdm": "tqdm",
        "PIL": "pillow", "huggingface_hub": "huggingface_hub", "safetensors": "safetensors",
        "torchvision": "torchvision", "timm": "timm", "rosbags": "rosbags", "apsw": "apsw",
        "lz4": "lz4", "ruamel.yaml": "ruamel.yaml", "numpy": "numpy"}
def have(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
print(" ".join(dist for module, dist in need.items() if not have(module)))
PY
)
if [ "${1:-}" = "--missing" ]; then
    echo "$missing"
    exit 0
fi
if [ -n "$missing" ]; then
    echo "gpu_check.sh: installing from $WHEELS (no network): $missing"
    if [ ! -d "$WHEELS" ]; then
        echo "gpu_check.sh: error: no wheel folder $WHEELS; run 'make gpu-wheels' where PyPI is" \
             "reachable and bring benchmarks/wheels/ (or set CASS_WHEELS)" >&2
        exit 2
    fi
    [ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-index \
        --find-links "$WHEELS" $missing
    PY="$VENV/bin/python"
fi
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" benchmarks/gpu_check.py "$@"

#!/usr/bin/env bash
# gpu_check: re-prove the GPU fast path (issue 8) in one command, on a
# machine with a CUDA GPU, Python 3.12, torch and timm, and no network.
#
#   benchmarks/gpu_check.sh [gpu_check.py options, e.g. --profile]
#   benchmarks/gpu_check.sh --missing   # only list the distributions it would install
#
# What cass_ros needs and the machine lacks (open_clip_torch, ftfy, scipy,
# opencv, rosbags ...) is installed from a folder of wheels, without network,
# into a folder put on PYTHONPATH (pip --target; without pip the wheels are
# unpacked), so the machine's own torch and timm are used. Prepare that
# folder where PyPI is reachable: `make gpu-wheels` (writes
# benchmarks/wheels/), and bring it along with the repository.
#   CASS_WHEELS   the wheel folder (default benchmarks/wheels)
#   CASS_GPU_SITE where the missing packages go (default $TMPDIR/cass_gpu_site)
#   PYTHON        the interpreter with torch (default python3)
#   GPU_CHECK_TIMEOUT  seconds before the check is stopped (default 480)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${CASS_WHEELS:-benchmarks/wheels}
SITE=${CASS_GPU_SITE:-${TMPDIR:-/tmp}/cass_gpu_site}
# what an earlier run installed counts as there
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

# module -> distribution, for what the library, cass_bag and the check import
missing=$("$PY" - "$WHEELS" <<'PY'
import glob, importlib.util, sys
need = {"open_clip": "open_clip_torch", "ftfy": "ftfy", "wcwidth": "wcwidth", "regex": "regex",
        "scipy": "scipy", "cv2": "opencv-python-headless", "yaml": "PyYAML", "tqdm": "tqdm",
        "PIL": "pillow", "huggingface_hub": "huggingface_hub", "safetensors": "safetensors",
        "torchvision": "torchvision", "timm": "timm", "rosbags": "rosbags", "apsw": "apsw",
        "lz4": "lz4", "ruamel.yaml": "ruamel.yaml", "numpy": "numpy"}
# cass_fleet's rows (Ray), only where the wheel folder brings ray
if glob.glob(f"{sys.argv[1]}/ray-*.whl"):
    need.update({"ray": "ray", "msgpack": "msgpack", "google.protobuf": "protobuf",
                 "jsonschema": "jsonschema", "jsonschema_specifications": "jsonschema-specifications",
                 "referencing": "referencing", "rpds": "rpds-py", "attrs": "attrs",
                 "click": "click", "filelock": "filelock", "requests": "requests",
                 "charset_normalizer": "charset-normalizer", "idna": "idna", "urllib3": "urllib3",
                 "certifi": "certifi", "packaging": "packaging"})
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
    mkdir -p "$SITE"
    if "$PY" -m pip --version >/dev/null 2>&1; then
        "$PY" -m pip install --disable-pip-version-check -q --no-index --no-deps \
            --find-links "$WHEELS" --target "$SITE" $missing
    else  # no pip: a wheel is a zip archive of what goes into site-packages
        "$PY" - "$WHEELS" "$SITE" $missing <<'PY'
import glob, re, sys, zipfile
wheels, site, names = sys.argv[1], sys.argv[2], sys.argv[3:]
for name in names:
    stem = re.sub(r"[-_.]+", "_", name).lower()
    found = [w for w in glob.glob(f"{wheels}/*.whl") if w.split("/")[-1].lower().startswith(stem + "-")]
    if not found:
        sys.exit(f"gpu_check.sh: error: no wheel for {name} in {wheels}")
    zipfile.ZipFile(sorted(found)[-1]).extractall(site)
PY
    fi
fi
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" benchmarks/gpu_check.py "$@"

"""Hub weights that cannot be had: one clear error naming the parameter,
never a silent fallback. Runs offline by construction (HF_HUB_OFFLINE and an
empty cache), in a subprocess because huggingface_hub reads that variable
when it is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import sys
from cass_ros.core.config import build_config
from cass_ros.core.models import WeightsError, load_clip, load_dino
cfg = build_config({"weights_cache_dir": sys.argv[1]})
for load, name in ((load_clip, "clip_weights"), (load_dino, "dino_weights")):
    try:
        load(cfg)
    except WeightsError as e:
        text = str(e)
        assert name in text and "weights_cache_dir" in text and "\n" not in text, text
        print("ok", name)
    else:
        print("loaded", name)
"""


def test_unreachable_hub_weights_name_the_parameter(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "cache")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["ok clip_weights", "ok dino_weights"], proc.stdout

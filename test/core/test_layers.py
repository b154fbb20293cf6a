"""The layers' import rules: the library (cass_ros.core) never reaches ROS,
rosbags or the upper layers; its public API resolves; importing a torch-free
module of it does not load torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "cass_ros" / "core"
BLOCKED = ("rclpy", "rosbags", "sensor_msgs", "std_msgs", "diagnostic_msgs", "rcl_interfaces",
           "cass_ros.msg", "cass_ros.ros", "cass_ros.bag", "cass_ros.cli", "cv_bridge", "mcap",
           "mcap_protobuf", "foxglove_schemas_protobuf")


def _run(code: str) -> subprocess.CompletedProcess:
    # A fresh interpreter with the source tree first, so what is checked is
    # this checkout's cass_ros whatever the environment has installed.
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})


def test_every_core_module_imports_with_ros_and_rosbags_blocked() -> None:
    # subpackages (queries/ ...) too: "queries.decode"
    modules = sorted(".".join(p.relative_to(CORE).with_suffix("").parts)
                     for p in CORE.rglob("*.py") if p.stem != "__init__")
    assert {"segmenter", "spectral", "prompt_session", "config", "queries.decode"} <= set(modules)
    proc = _run(f"""
        import importlib.abc, sys
        BLOCKED = {BLOCKED!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                    raise ImportError(f"the library imported {{name}}")
        sys.meta_path.insert(0, Block())
        import importlib
        import cass_ros.core as core
        for m in {modules!r}:
            importlib.import_module("cass_ros.core." + m)
        for name in core.__all__:
            getattr(core, name)
        print("ok", len(core.__all__))
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")


@pytest.mark.parametrize("module", ["prompts", "config", "prompt_session", "datasets", "metrics"])
def test_torch_free_modules_do_not_load_torch(module: str) -> None:
    proc = _run(f"""
        import sys
        import cass_ros.core.{module}
        print("torch" in sys.modules)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


def test_public_api_names_the_real_objects() -> None:
    import cass_ros.core as core
    from cass_ros.core.config import build_config
    from cass_ros.core.segmenter import Segmenter

    assert core.Segmenter is Segmenter and core.build_config is build_config
    with pytest.raises(AttributeError):
        core.no_such_name  # noqa: B018


# Ray and matplotlib are cass_fleet's (setup.cfg's `fleet` extra): the
# library, the node and cass_bag never load them, nor the fleet layer above them.
FLEET_ONLY = ("ray", "matplotlib", "cass_ros.fleet", "cass_ros.cli")


def test_core_ros_and_bag_never_load_ray_matplotlib_or_the_fleet() -> None:
    pkg = REPO / "cass_ros"
    modules = sorted("cass_ros." + ".".join(p.relative_to(pkg).with_suffix("").parts)
                     for layer in ("core", "ros", "bag") for p in (pkg / layer).rglob("*.py")
                     if p.stem != "__init__")
    assert "cass_ros.bag.tool" in modules and "cass_ros.ros.wiring.node" in modules
    # This environment as it is (the installed messages, rclpy): only the
    # fleet's dependencies are blocked.
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import importlib, importlib.abc, sys
        BLOCKED = {FLEET_ONLY!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                    raise ImportError(f"imported {{name}}")
        sys.meta_path.insert(0, Block())
        for m in {modules!r}:
            try:
                importlib.import_module(m)
            except ImportError as e:
                if "imported " in str(e) or not m.startswith("cass_ros.ros."):
                    raise SystemExit(f"{{m}}: {{e}}")
                print("skipped", m, e)  # a ROS module without ROS here
        print("ok", sorted(b for b in BLOCKED if b in sys.modules))
    """)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "ok []", proc.stdout[-2000:]

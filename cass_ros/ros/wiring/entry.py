"""The entry points of the executables that need ROS 2 (``cass_node``,
``cass_lifecycle_node``): before importing the node they check that what it
needs is there, and where it is not they say in one line what is missing
and how to get it (exit status 2), instead of an import traceback.

The cases, in the order a new user meets them:

- no rclpy: ROS 2 is not installed or its setup file is not sourced
  (``pip install .`` alone gives the library and the ROS-free tools);
- rclpy but no ``cass_ros.msg``: the package was installed by pip, which
  does not generate the messages; colcon builds them;
- another module missing while the node loads: a ROS package (rosdep) or a
  Python dependency (rosdep, then ``requirements-ros.txt``).

This module imports nothing from ROS at module level (nor torch): it must
run where they are missing, and before them (the stop signals are
installed first, as in scripts/cass_node).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator

from .stopping import StopRequested, StopSignals

EXIT_MISSING = 2
README_HINT = 'see the README, "The ROS 2 node"'
WORKSPACE_STEPS = ("rosdep install --from-paths src --ignore-src -y, "
                   "pip install -r src/cass_ros/requirements-ros.txt")
# Modules that come from pip or apt rather than from a ROS package; any other
# module missing while the node loads is taken for a ROS package (rosdep).
PYTHON_DEPENDENCIES = frozenset({
    "numpy", "scipy", "cv2", "PIL", "yaml", "torch", "torchvision", "tqdm", "timm",
    "open_clip", "ftfy", "regex", "huggingface_hub", "safetensors", "rosbags",
})


def _found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package missing or broken
        return False


def missing_ros(prog: str) -> str | None:
    """The one line saying what ROS piece ``prog`` lacks, or None."""
    if not _found("rclpy"):
        return (f"{prog}: ROS 2 Python (rclpy) not found: this executable needs a ROS 2 "
                "installation; source it (source /opt/ros/<distro>/setup.bash) and the "
                f"workspace that built cass_ros (source install/setup.bash); {README_HINT} "
                "(without ROS, pip install . gives cass_segment, cass_bag and cass_eval)")
    if not _found("cass_ros.msg"):
        where = os.path.dirname(sys.modules["cass_ros"].__file__ or "")
        return (f"{prog}: the cass_ros messages (cass_ros.msg) are not built: this cass_ros "
                f"({where}) was not installed by colcon; build it in a ROS 2 workspace "
                "(colcon build --packages-select cass_ros && source install/setup.bash); "
                f"{README_HINT}")
    return None


def missing_module(prog: str, error: ModuleNotFoundError) -> str | None:
    """The one line for a module that failed to import while the node
    loaded, or None when ``error`` is not about a missing module."""
    name = (error.name or "").split(".")[0]
    if not name:
        return None
    if name == "cass_ros":
        return (f"{prog}: {error.name} not found: this cass_ros install is incomplete; "
                f"rebuild it (colcon build --packages-select cass_ros); {README_HINT}")
    if name in PYTHON_DEPENDENCIES:
        return (f"{prog}: Python module {name!r} not found: install the Python dependencies "
                f"({WORKSPACE_STEPS}); {README_HINT}")
    return (f"{prog}: ROS 2 Python package {name!r} not found: install the ROS dependencies "
            f"of cass_ros (rosdep install --from-paths src --ignore-src -y) and source the "
            f"ROS 2 setup file again; {README_HINT}")


@contextlib.contextmanager
def needs_ros(prog: str, signals: StopSignals) -> Iterator[None]:
    """Around the import of a node module: exit with one line on stderr
    (status 2) where ROS or a dependency is missing, and with status 0 on
    a stop requested while loading (``signals`` raise StopRequested)."""
    try:
        problem = missing_ros(prog)
        if problem is None:
            try:
                yield
                return
            except ModuleNotFoundError as e:
                problem = missing_module(prog, e)
                if problem is None:
                    raise
    except StopRequested:
        sys.exit(0)
    signals.restore()
    print(problem, file=sys.stderr)
    sys.exit(EXIT_MISSING)


def node_main() -> None:
    """``cass_node`` (console script of ``pip install .``; scripts/cass_node
    does the same for colcon)."""
    # Before the heavy imports (rclpy, torch): a SIGINT or SIGTERM while
    # they load is a stop too (cass_ros.ros.stopping).
    signals = StopSignals()
    with needs_ros("cass_node", signals):
        from .node import main
    main(signals=signals)


def lifecycle_main() -> None:
    """``cass_lifecycle_node`` (console script of ``pip install .``)."""
    signals = StopSignals()
    with needs_ros("cass_lifecycle_node", signals):
        from .lifecycle_node import main
    main(signals=signals)

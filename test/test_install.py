"""The install paths of the README (issue 18): a ROS workspace on a robot's
Python, and pip alone without ROS.

The robot's Python is simulated by a fresh virtual environment that holds
numpy 1.26.4 (as Ubuntu 24.04's python3-numpy, which apt's cv_bridge is
built against) and, standing in for what apt and the rosdep keys of
package.xml install (python3-torch, python3-scipy, python3-opencv,
python3-timm-pip, python3-rosbags-pip ...), a folder of links to those
distributions of this development environment and their own requirements
(numpy excepted), put on the environment's path after its own
site-packages, so that its numpy 1.26 wins. Into it:

- ``pip install -r requirements-ros.txt`` must change no numpy and bring no
  ``ros-*`` wheel: only open_clip_torch and its small helpers (pip's
  ``--dry-run --report``), all of which accept Python 3.12;
- after the real install, every module the library needs imports, numpy is
  still 1.26.4, and a tiny segmentation (``cass_segment``) runs;
- ``pip install .`` there gives working ``cass_segment``, ``cass_bag`` and
  ``cass_eval``, and ``cass_node`` / ``cass_lifecycle_node`` say in one
  line what is missing (no rclpy; no built messages) and exit 2.

And, without any install: every third-party import of the package is
declared, in package.xml (a rosdep key) or in requirements-ros.txt (Ray, for
cass_fleet alone, in setup.cfg's ``fleet`` extra).

Needs the package index (PyPI or the machine's mirror) for numpy 1.26.4
and open_clip_torch; skips, with the reason, where it cannot be reached.
Not tried here: Python 3.12 itself (this machine has 3.11), apt and rosdep.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS_ROS = REPO / "requirements-ros.txt"
NUMPY_APT = "1.26.4"  # Ubuntu 24.04 (noble), the Python of Jazzy and Kilted
PYTHON_ROBOT = "3.12"
# What requirements-ros.txt may bring (canonical names): open_clip_torch and
# its requirements that neither apt nor a rosdep key provides.
EXPECTED_FROM_REQUIREMENTS_ROS = {"open-clip-torch", "ftfy", "regex", "wcwidth",
                                  # cass_bag's Foxglove MCAP input and what it needs
                                  "mcap", "mcap-protobuf-support", "protobuf", "zstandard"}
# The distributions that apt and the rosdep keys of package.xml install
# (their own requirements follow, numpy excepted: the venv has apt's).
APT_AND_ROSDEP = ["torch", "torchvision", "scipy", "opencv-python-headless", "pillow", "PyYAML",
                  "tqdm", "timm", "rosbags"]
# Never in the stand-in for apt: they must come from requirements-ros.txt,
# or not at all (ROS is absent from the simulated Python).
NOT_STANDING_IN = re.compile(r"^(numpy|open[-_]clip|ftfy|regex|wcwidth|ros[-_]|rclpy|rcl)", re.I)
LIBRARY_IMPORTS = ["numpy", "scipy", "cv2", "PIL", "yaml", "tqdm", "torch", "torchvision", "timm",
                   "open_clip", "rosbags", "cass_ros.core", "cass_ros.core.segmenter",
                   "cass_ros.bag.io", "cass_ros.cli.segment"]


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip(venv_python: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """This environment's pip, run for the given interpreter (pip --python)."""
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check",
                           "--python", str(venv_python), *args],
                          capture_output=True, text=True, timeout=timeout)


def _requirement_closure(roots: list[str]) -> list[md.Distribution]:
    """The installed distributions ``roots`` and, recursively, their
    requirements (with the extras they ask for), numpy excepted."""
    from packaging.requirements import Requirement

    seen: dict[str, md.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo: list[tuple[str, str]] = [(r, "") for r in roots]
    while todo:
        name, extra = todo.pop()
        name = _canon(name)
        if (name, extra) in done or name == "numpy":
            continue
        done.add((name, extra))
        try:
            dist = seen.get(name) or md.distribution(name)
        except md.PackageNotFoundError:
            continue  # a platform-only requirement not installed here
        seen[name] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo.extend((req.name, e) for e in sorted(req.extras) or [""])
    return list(seen.values())


def _apt_stand_in(folder: Path) -> list[str]:
    """Links in ``folder`` to the top-level entries of the closure of
    APT_AND_ROSDEP in this environment's site-packages; their names."""
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    folder.mkdir(parents=True)
    names: set[str] = set()
    for dist in _requirement_closure(APT_AND_ROSDEP):
        for f in dist.files or []:
            path = Path(dist.locate_file(f)).resolve()
            try:
                top = path.relative_to(site).parts[0]
            except ValueError:
                continue  # bin/ scripts, data outside site-packages
            if top.endswith(".pth") or top == "__pycache__":
                continue
            names.add(top)
    for top in sorted(names):
        assert not NOT_STANDING_IN.match(top), f"{top} must not stand in for apt"
        (folder / top).symlink_to(site / top)
    return sorted(names)


class RobotVenv:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.venv = root / "venv"
        self.python = self.venv / "bin" / "python"
        self.stand_in: list[str] = []

    def env(self, **extra: str) -> dict[str, str]:
        """No variables of this session (PYTHONPATH, AMENT_PREFIX_PATH ...)."""
        env = {k: v for k, v in os.environ.items()
               if k in ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER")}
        env["PATH"] = f"{self.venv / 'bin'}:/usr/bin:/bin"
        env.update(extra)
        return env

    def run(self, args: list[str], timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root, env=self.env(**extra))


@pytest.fixture(scope="module")
def robot(tmp_path_factory) -> RobotVenv:
    r = RobotVenv(tmp_path_factory.mktemp("robot"))
    wheels = r.root / "wheels"
    got = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "download",
                          "--no-deps", "--only-binary=:all:", "-d", str(wheels),
                          f"numpy=={NUMPY_APT}"], capture_output=True, text=True, timeout=300)
    if got.returncode != 0:
        pytest.skip(f"cannot download numpy {NUMPY_APT} (no package index?): "
                    f"{got.stderr.strip().splitlines()[-1:]}")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(r.venv)], check=True,
                   timeout=120)
    done = _pip(r.python, "install", "--no-index", "--no-deps", "--find-links", str(wheels),
                f"numpy=={NUMPY_APT}")
    assert done.returncode == 0, done.stderr
    r.stand_in = _apt_stand_in(r.root / "apt_stand_in")
    site = Path(r.run([str(r.python), "-c", "import sysconfig; "
                       "print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # A .pth line is appended to sys.path after the venv's site-packages.
    (site / "zz_apt_stand_in.pth").write_text(f"{r.root / 'apt_stand_in'}\n")
    return r


def test_robot_venv_is_like_apt(robot: RobotVenv) -> None:
    """The simulation itself: apt's numpy, no ROS, no open_clip yet."""
    probe = robot.run([str(robot.python), "-c",
                       "import importlib.util as u, numpy; print(numpy.__version__); "
                       "print([m for m in ('rclpy', 'open_clip', 'torch', 'timm') if u.find_spec(m)])"])
    assert probe.returncode == 0, probe.stderr
    version, found = probe.stdout.split("\n")[:2]
    assert version == NUMPY_APT
    assert found == "['torch', 'timm']"
    assert "torch" in robot.stand_in and "timm" in robot.stand_in and "rosbags" in robot.stand_in


def test_requirements_ros_changes_no_numpy_and_brings_no_ros(robot: RobotVenv) -> None:
    from packaging.specifiers import SpecifierSet

    report = robot.root / "report.json"
    dry = _pip(robot.python, "install", "--dry-run", "--report", str(report),
               "-r", str(REQUIREMENTS_ROS))
    if dry.returncode != 0 and "No matching distribution" in dry.stderr:
        pytest.skip(f"package index not reachable: {dry.stderr.strip().splitlines()[-1:]}")
    assert dry.returncode == 0, dry.stderr
    items = json.loads(report.read_text())["install"]
    names = {_canon(i["metadata"]["name"]): i["metadata"] for i in items}
    assert "numpy" not in names, names["numpy"]["version"]
    ros = [n for n in names if n.startswith(("ros-", "rclpy", "rcl-"))]
    assert not ros, f"requirements-ros.txt would install ROS wheels: {ros}"
    assert "open-clip-torch" in names
    assert set(names) <= EXPECTED_FROM_REQUIREMENTS_ROS, (
        f"unexpected: {sorted(set(names) - EXPECTED_FROM_REQUIREMENTS_ROS)} "
        "(apt and the rosdep keys must bring these, or requirements-ros.txt name them)")
    for name, meta in names.items():
        requires = meta.get("requires_python") or ""
        assert SpecifierSet(requires).contains(PYTHON_ROBOT), (name, requires)


def test_requirements_ros_text() -> None:
    """No numpy, no ROS wheel, no exact pins: a range that apt's stack fits."""
    lines = [ln.split("#", 1)[0].strip() for ln in REQUIREMENTS_ROS.read_text().splitlines()]
    reqs = [ln for ln in lines if ln]
    names = {_canon(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) for r in reqs}
    assert names == {"open-clip-torch", "ftfy", "regex", "mcap", "mcap-protobuf-support"}, names
    assert not any("==" in r for r in reqs), reqs


@pytest.fixture(scope="module")
def installed(robot: RobotVenv) -> RobotVenv:
    """requirements-ros.txt, then ``pip install --no-deps .`` of a copy of
    the package (a copy: pip builds in the source tree, whose build/ is
    colcon's), into the robot's Python."""
    done = _pip(robot.python, "install", "-r", str(REQUIREMENTS_ROS))
    if done.returncode != 0 and "No matching distribution" in done.stderr:
        pytest.skip(f"package index not reachable: {done.stderr.strip().splitlines()[-1:]}")
    assert done.returncode == 0, done.stderr
    src = robot.root / "src" / "cass_ros"
    for name in ("setup.py", "setup.cfg", "README.md", "package.xml"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    for folder in ("cass_ros", "resource", "launch", "config"):
        shutil.copytree(REPO / folder, src / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = _pip(robot.python, "install", "--no-deps", str(src))
    assert done.returncode == 0, done.stderr
    return robot


def test_library_imports_with_apt_numpy(installed: RobotVenv) -> None:
    code = ("import importlib, numpy\n"
            f"for m in {LIBRARY_IMPORTS!r}: importlib.import_module(m)\n"
            "import cass_ros; print(numpy.__version__, cass_ros.__file__)\n")
    proc = installed.run([str(installed.python), "-c", code])
    assert proc.returncode == 0, proc.stderr[-3000:]
    version, where = proc.stdout.split()
    assert version == NUMPY_APT
    assert where.startswith(str(installed.venv)), where


def _segment(robot: RobotVenv, tiny_weights: tuple[str, str], name: str, **env: str) -> dict:
    """The installed cass_segment on one small image, tiny random weights;
    its JSON result."""
    import cv2
    import numpy as np

    work = robot.root / name
    work.mkdir()
    rng = np.random.default_rng(0)
    assert cv2.imwrite(str(work / "img.png"), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    proc = robot.run([str(robot.venv / "bin" / "cass_segment"), str(work / "img.png"),
                      "--out", str(work / "out"), "--prompts", "car, person",
                      "--set", f"clip_weights={tiny_weights[0]}",
                      "--set", f"dino_weights={tiny_weights[1]}",
                      "--device", "cpu", "-q"], timeout=300, **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((work / "out" / "img.json").read_text())
    assert doc["class_names"] == ["background", "car", "person"]
    assert (work / "out" / "img_labels.png").is_file()
    return doc


def test_tiny_segmentation_with_apt_numpy(installed: RobotVenv, tiny_weights) -> None:
    """The installed cass_segment, tiny random weights, under numpy 1.26."""
    _segment(installed, tiny_weights, "seg")


def test_lowest_open_clip_segments(installed: RobotVenv, tiny_weights) -> None:
    """The lower bound of requirements-ros.txt is one the library runs with
    (pip may pick it where apt's torch or timm rule newer ones out)."""
    floor = re.search(r"^open_clip_torch>=([\d.]+)", REQUIREMENTS_ROS.read_text(), re.M)
    assert floor, "requirements-ros.txt: open_clip_torch needs a lower bound"
    target = installed.root / "open_clip_floor"
    done = _pip(installed.python, "install", "--no-deps", "--target", str(target),
                f"open_clip_torch=={floor.group(1)}")
    assert done.returncode == 0, done.stderr
    where = installed.run([str(installed.python), "-c", "import open_clip; print(open_clip.__file__)"],
                          PYTHONPATH=str(target))
    assert where.stdout.startswith(str(target)), (where.stdout, where.stderr[-2000:])
    _segment(installed, tiny_weights, "floor", PYTHONPATH=str(target))


@pytest.mark.parametrize("exe", ["cass_segment", "cass_bag", "cass_eval"])
def test_pip_only_tools_start(installed: RobotVenv, exe: str) -> None:
    proc = installed.run([str(installed.venv / "bin" / exe), "--help"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage:" in proc.stdout


@pytest.mark.parametrize("exe", ["cass_node", "cass_lifecycle_node"])
def test_ros_executables_say_what_is_missing(installed: RobotVenv, exe: str) -> None:
    path = str(installed.venv / "bin" / exe)
    # no ROS at all
    proc = installed.run([path])
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"{exe}: ROS 2 Python (rclpy) not found")
    assert "source /opt/ros/<distro>/setup.bash" in lines[0]
    # ROS there (an rclpy stands in), but cass_ros was pip-installed: no messages
    fake = installed.root / "fake_ros"
    (fake / "rclpy").mkdir(parents=True, exist_ok=True)
    (fake / "rclpy" / "__init__.py").write_text("")
    proc = installed.run([path], PYTHONPATH=str(fake))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"{exe}: the cass_ros messages (cass_ros.msg) are not built")
    assert "colcon build --packages-select cass_ros" in lines[0]


def test_missing_module_while_loading_is_one_line(capsys, monkeypatch) -> None:
    """A module missing while the node loads (rclpy and the messages there)."""
    from cass_ros.ros.wiring import entry
    from cass_ros.ros.wiring.stopping import StopSignals

    monkeypatch.setattr(entry, "missing_ros", lambda prog: None)

    for name, expect in (("open_clip", "requirements-ros.txt"),
                         ("vision_msgs.msg", "rosdep install --from-paths src")):
        signals = StopSignals()
        try:
            with pytest.raises(SystemExit) as stop, entry.needs_ros("cass_node", signals):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        finally:
            signals.restore()
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expect in err[0], err
        assert repr(name.split(".")[0]) in err[0]


# ---------------------------------------------------------------- declared dependencies

# Every third-party top-level module the package imports -> what declares it:
# a package.xml key (rosdep or a ROS package) or "requirements-ros.txt:<name>".
DECLARED_BY = {
    "numpy": "python3-numpy",
    "scipy": "python3-scipy",
    "cv2": "python3-opencv",
    "PIL": "python3-pil",
    "yaml": "python3-yaml",
    "tqdm": "python3-tqdm",
    "torch": "python3-torch",
    "torchvision": "python3-torchvision",
    "timm": "python3-timm-pip",
    "rosbags": "python3-rosbags-pip",
    "apsw": "python3-rosbags-pip",  # a requirement of rosbags (its .db3 storage)
    "open_clip": "requirements-ros.txt:open_clip_torch",
    "mcap": "requirements-ros.txt:mcap",                      # bag/inputs/foxglove.py
    "mcap_protobuf": "requirements-ros.txt:mcap-protobuf-support",
    "rclpy": "rclpy",
    "std_msgs": "std_msgs",
    "sensor_msgs": "sensor_msgs",
    "geometry_msgs": "geometry_msgs",
    "diagnostic_msgs": "diagnostic_msgs",
    "builtin_interfaces": "builtin_interfaces",
    "vision_msgs": "vision_msgs",
    "rcl_interfaces": "rcl_interfaces",
    "lifecycle_msgs": "lifecycle_msgs",
    "cv_bridge": "cv_bridge",
    "launch": "launch",
    "launch_ros": "launch_ros",
    "ament_index_python": "ament_index_python",
    "matplotlib": "python3-matplotlib",    # cass_fleet's report
    "ray": "setup.cfg[fleet]:ray",         # no rosdep key; not for the robot's install
}
# Imported only when a user asks for them and present without being declared:
# semantic_inference_msgs has no rosdep key, Hydra's users build it from
# source beside cass_ros (docs/ros-interface.md, "semantic_inference"); the
# node runs without it. Allowed only in these modules, inside functions.
OPTIONAL = {
    "semantic_inference_msgs": ("cass_ros/ros/outputs/semantic_inference.py",
                                "cass_ros/ros/services/encode_feature.py"),
}
# What setup.cfg's `fleet` extra alone declares may be imported only here:
# requirements-ros.txt is installed whole on a robot, which needs no Ray.
FLEET_ONLY = "cass_ros/fleet/"


def _sources() -> list[Path]:
    """The package's Python: cass_ros/, the installed scripts, the launch file."""
    return (sorted((REPO / "cass_ros").rglob("*.py")) + sorted((REPO / "scripts").iterdir())
            + sorted((REPO / "launch").glob("*.py")))


def third_party_imports() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top != "cass_ros":
                    found.setdefault(top, []).append(str(path.relative_to(REPO)))
    return found


def top_level_imports() -> set[str]:
    """Third-party top-level modules imported at a module's load (its
    top-level statements), not inside a function."""
    found = set()
    for path in _sources():
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def declared() -> set[str]:
    root = ET.parse(REPO / "package.xml").getroot()
    keys = {e.text.strip() for tag in ("depend", "exec_depend") for e in root.iter(tag)}
    from packaging.requirements import Requirement

    for line in REQUIREMENTS_ROS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            keys.add(f"requirements-ros.txt:{Requirement(line).name}")
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    for line in cfg["options.extras_require"]["fleet"].split("\n"):
        if line.strip():
            keys.add(f"setup.cfg[fleet]:{Requirement(line.strip()).name}")
    return keys


def test_every_third_party_import_is_declared() -> None:
    imports = third_party_imports()
    assert {"torch", "open_clip", "rclpy"} <= set(imports), "the import scan found nothing"
    optional = {m: files for m, files in imports.items() if m in OPTIONAL}
    assert all(set(files) <= set(OPTIONAL[m]) for m, files in optional.items()), optional
    assert not (set(optional) & top_level_imports()), "an optional package imported at load"
    imports = {m: files for m, files in imports.items() if m not in OPTIONAL}
    unknown = {m: files[:3] for m, files in imports.items() if m not in DECLARED_BY}
    assert not unknown, (
        f"imports with no declared dependency: {unknown}; add the rosdep key to package.xml "
        "(or, with no key, the pip name to requirements-ros.txt) and map it in DECLARED_BY")
    keys = declared()
    undeclared = {m: DECLARED_BY[m] for m in imports if DECLARED_BY[m] not in keys}
    assert not undeclared, f"mapped but not in package.xml / requirements-ros.txt: {undeclared}"
    fleet_only = {m: files for m, files in imports.items()
                  if DECLARED_BY[m].startswith("setup.cfg[fleet]:")
                  and any(not f.startswith(FLEET_ONLY) for f in files)}
    assert not fleet_only, f"imported outside {FLEET_ONLY} but only in the fleet extra: {fleet_only}"

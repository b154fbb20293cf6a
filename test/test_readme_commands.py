"""Every shell command of the README runs, as written, after the README's
own set-up: the README cannot drift from the code again.

The commands are read from the README's ```bash blocks (and its ```python
block); CASES below says, for each, what the test does with it. A README
command without an entry here fails test_every_readme_command_has_a_case,
and so does an entry whose command left the README: a new example must be
taught to this file.

Each command runs through bash in a fresh environment (no variables of
this test session's sourcing, see ros2_shell.user_env) after the README's
set-up line, with tiny inputs made for it in a scratch folder holding a copy
of config/ (so that outputs do not land in the repository). The documented
substitutions (the ``how`` of each case):

- weights: tiny random checkpoints (fixture ``tiny_weights``) through the
  command's own settings mechanism (``--set``, ``-p``, ``params_file:=``),
  appended to the command as typed; the pretrained download of the
  weights block runs with ``pretrained=None/False`` (no network here);
- GPU: ``--device cuda`` is followed by ``--device cpu`` (the later flag
  wins; there is no GPU on the test machines);
- ros2 verbs that offer it get ``--no-daemon`` and more discovery time (as
  in test/ros/test_ros2_cli.py); the ROS commands skip, with the reason,
  where ros2cli is not installed;
- ``make demo`` runs with ``DEMO_ARGS='--weights random'`` and an output
  folder here, and without remaking install/ under the running suite;
  ``make test`` is only dry-run (it is the command running this test);
- the cluster block (``ray start --head``, ``ray start --address``,
  ``cass_fleet --address``, ``ray stop``) runs once, in order, as a head and
  two joined nodes on this machine (``_cluster``): ``HEAD:6379`` is
  127.0.0.1 and a free port, each node gets ``--temp-dir`` in a scratch
  folder and the joined ones ``--num-cpus=1``, ``/shared/`` is a scratch
  folder, the token a new one in ``RAY_AUTH_TOKEN``; all of it in a PID
  namespace of its own (``unshare``), so that ``ray stop`` as typed stops
  this cluster and nothing else of the machine's, and whatever is left
  when it ends (a failure) is killed.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ros2_shell
from ros2_shell import REPO, bash, readme_blocks, shell_commands, strip_comment

BUILD_STAMP = "install/cass_ros/share/cass_ros/package.xml"
# The README's commands name .venv and install/, Kilted's trees: they run, and
# are counted, once, under Kilted (issue 22), never against another
# distribution's suite.
pytestmark = pytest.mark.skipif(
    not ros2_shell.README_TREES,
    reason=f"the README's commands run Kilted's .venv and install/: counted once, under Kilted "
           f"(this suite runs {ros2_shell.VENV.name})")


def readme_commands() -> list[str]:
    return [strip_comment(c) for _, block in readme_blocks("bash") for c in shell_commands(block)]


# ---------------------------------------------------------------- context shared by the cases


class Ctx:
    """Scratch folders, tiny weights, and (for the ROS block) the node that
    the README's ``ros2 launch`` line started, with a listening test node."""

    def __init__(self, root: Path, tiny_weights: tuple[str, str], sample_bag: Any,
                 ros_domain: int) -> None:
        self.root = root
        self.weights = tiny_weights
        self.sample_bag = sample_bag
        self.domain = ros_domain
        self.params = ros2_shell.tiny_params_file(root / "tiny_cass.yaml", tiny_weights)
        self._n = 0
        self.harness: Any = None
        self.launch: subprocess.Popen | None = None
        self.launch_log = root / "launch.log"
        self.cluster: dict[str, Any] | None = None   # the cluster block's run (_cluster)

    def scratch(self) -> Path:
        """A new folder with a copy of config/, as the repository root has it."""
        self._n += 1
        path = self.root / f"case{self._n}"
        shutil.copytree(REPO / "config", path / "config")
        return path

    def weight_args(self) -> str:
        return f"--set clip_weights={self.weights[0]} dino_weights={self.weights[1]}"

    def listen(self) -> Any:
        if self.harness is None:
            from cass_ros.msg import ClassTable
            from node_harness import Harness

            self.harness = Harness(self.domain, "/readme_test")
            for topic in ("/cass/classes", "/readme_by_path/cass/classes"):
                self.harness.subscribe(ClassTable, topic, self.harness.latched_qos())
        return self.harness

    def table(self, topic: str, names: list[str], proc: subprocess.Popen | None = None,
              log: Path | None = None, timeout: float = 120.0) -> Any:
        """The latched class table on ``topic`` whose classes are ``names``."""
        harness = self.listen()
        return ros2_shell.wait_until(
            lambda: next((t for t in reversed(harness.got(topic))
                          if list(t.class_names[1:]) == names), None),
            timeout, f"class table {names} on {topic}", proc, log)

    def latest(self, topic: str = "/cass/classes") -> Any:
        got = self.listen().got(topic)
        return got[-1] if got else None

    def close(self) -> None:
        if self.launch is not None:
            ros2_shell.stop(self.launch)
        if self.harness is not None:
            self.harness.close()


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_weights, sample_bag, ros_domain):
    c = Ctx(tmp_path_factory.mktemp("readme"), tiny_weights, sample_bag, ros_domain)
    yield c
    c.close()
    if ros2_shell.have_ros2cli() is None:
        ros2_shell.bash("ros2 daemon stop", c.root, timeout=30)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _image(path: Path, seed: int, h: int = 48, w: int = 64) -> None:
    import cv2

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _no_make_env() -> dict[str, str]:
    # a make started from `make test` must not join the outer make's jobserver
    env = ros2_shell.user_env()
    for k in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES"):
        env.pop(k, None)
    return env


# ---------------------------------------------------------------- the cases


def run_make_demo(ctx: Ctx, cmd: str) -> None:
    out = ctx.root / "demo_output"
    # -o: the suite runs on install/ as it is; never rebuild it underneath
    proc = bash(cmd.replace("make demo", f"make -o {BUILD_STAMP} demo", 1)
                + f" DEMO_OUT={out} DEMO_ARGS='--weights random'",
                REPO, env=_no_make_env(), setup=False, timeout=600)
    _ok(proc)
    assert f"demo outputs in {out}" in proc.stdout
    assert (out / "output_bag" / "metadata.yaml").is_file()
    assert list((out / "overlays" / "camera").glob("*_overlay.png"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary, "empty summary"
    assert (out / "summary.csv").read_text().startswith("frame_index,")


def run_make_test(ctx: Ctx, cmd: str) -> None:
    proc = _ok(bash(cmd.replace("make test", f"make -n -o {BUILD_STAMP} test", 1), REPO,
                    env=_no_make_env(), setup=False, timeout=60))
    # lint first, then pytest per distribution (the Makefile's recursion)
    assert re.search(r"ruff check .*\n(?:.*\n)*?.*pytest .* test", proc.stdout), proc.stdout


def run_setup(ctx: Ctx, cmd: str) -> None:
    assert cmd == ros2_shell.setup_line()
    # outside the repository root, whose cass_ros/ (no generated messages)
    # would come first on sys.path
    proc = _ok(bash("command -v python && python -c 'import cass_ros.msg, cass_ros.cli.segment; "
                    "print(cass_ros.msg.__file__)' && (command -v ros2 || true)", ctx.root))
    lines = proc.stdout.split()
    assert Path(lines[0]).parent.resolve() == (REPO / ".venv" / "bin").resolve()
    assert lines[1].startswith(str(REPO / "install" / "cass_ros")), lines[1]
    if ros2_shell.have_ros2cli() is None:
        assert Path(lines[2]).parent.resolve() == (REPO / ".venv" / "bin").resolve(), lines


def run_colcon_workspace(ctx: Ctx, cmd: str) -> None:
    # A ROS workspace with this repository in src/ (its files, as git sees
    # them). The venv with AMENT_PREFIX_PATH stands in for /opt/ros/<distro>.
    ws = ctx.root / "ws"
    src = ws / "src" / "cass_ros"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    check = ("python -c 'from cass_ros.msg import ClassTable; import cass_ros.cli.segment; "
             "print(cass_ros.cli.segment.__file__)'")
    proc = _ok(bash(f"source {REPO}/.venv/bin/activate && export AMENT_PREFIX_PATH=$VIRTUAL_ENV"
                    f" && cd {ws} && {cmd} && {check}", ws, setup=False, timeout=900))
    assert proc.stdout.strip().splitlines()[-1].startswith(str(ws / "install" / "cass_ros"))
    assert (ws / "install" / "cass_ros" / "lib" / "cass_ros" / "cass_segment").is_file()


def run_launch(ctx: Ctx, cmd: str) -> None:
    ctx.listen()
    ctx.launch = ros2_shell.start_bash(f"{cmd} params_file:={ctx.params} device:=cpu",
                                       ctx.scratch(), ctx.launch_log)
    table = ctx.table("/cass/classes", ["person", "forklift", "pallet"], ctx.launch,
                      ctx.launch_log, timeout=240)
    assert table.synonyms[1] == "person|worker"


def _need_launch(ctx: Ctx) -> None:
    if ctx.launch is None or ctx.launch.poll() is not None:
        launch = next(c for c in readme_commands() if c.startswith("ros2 launch "))
        run_launch(ctx, launch)


def run_topic_pub(ctx: Ctx, cmd: str) -> None:
    _need_launch(ctx)
    names = ["person", "car", "bicycle"]
    got = ctx.listen()
    ros2_shell.publish_once(cmd, ctx.scratch(), lambda: any(
        list(t.class_names[1:]) == names for t in got.got("/cass/classes")))
    table = ctx.table("/cass/classes", names, ctx.launch, ctx.launch_log)
    assert table.synonyms[1] == "person|pedestrian"


def _discovery_flags(cmd: str) -> str:
    verb = " ".join(cmd.split()[:3])
    extra = "--no-daemon --timeout 20" if verb.startswith("ros2 param") else "--no-daemon --spin-time 5"
    return cmd.replace(verb, f"{verb} {extra}", 1)


def run_topic_echo(ctx: Ctx, cmd: str) -> None:
    _need_launch(ctx)
    current = ctx.latest()
    proc = _ok(bash(_discovery_flags(cmd), ctx.scratch(), timeout=90))
    assert f"prompt_id: {current.prompt_id}" in proc.stdout, proc.stdout
    for name in current.class_names:
        assert f"- {name}" in proc.stdout, proc.stdout


def run_label_info_echo(ctx: Ctx, cmd: str) -> None:
    _need_launch(ctx)
    current = ctx.latest()
    proc = _ok(bash(_discovery_flags(cmd), ctx.scratch(), timeout=90))
    for value, name in enumerate(current.class_names):
        assert f"class_id: {value}\n  class_name: {name}" in proc.stdout, proc.stdout


def run_param_set(ctx: Ctx, cmd: str) -> None:
    _need_launch(ctx)
    proc = _ok(bash(_discovery_flags(cmd), ctx.scratch(), timeout=90))
    assert "Set parameter successful" in proc.stdout, (proc.stdout, proc.stderr)
    ctx.table("/cass/classes", ["forklift", "pallet"], ctx.launch, ctx.launch_log)


def run_param_get(ctx: Ctx, cmd: str) -> None:
    _need_launch(ctx)
    current = ctx.latest()
    proc = _ok(bash(_discovery_flags(cmd), ctx.scratch(), timeout=90))
    # the prompts in force, with their synonyms
    shown = re.search(r"\[(.*)\]", proc.stdout)
    assert shown, proc.stdout
    assert re.findall(r"'([^']*)'", shown.group(1)) == list(current.synonyms[1:]), proc.stdout


def run_node_by_path(ctx: Ctx, cmd: str) -> None:
    # from the repository root (install/ and config/ are its folders); in a
    # namespace of its own so that it cannot answer for the launched node
    log = ctx.root / "node_by_path.log"
    args = (f" -p clip_weights:={ctx.weights[0]} -p dino_weights:={ctx.weights[1]}"
            " -p device:=cpu -p short_side:=64 -r __ns:=/readme_by_path")
    ctx.listen()
    proc = ros2_shell.start_bash(cmd + args, REPO, log)
    try:
        ctx.table("/readme_by_path/cass/classes", ["car", "person"], proc, log, timeout=240)
    finally:
        rc = ros2_shell.stop(proc)
    assert rc == 0, log.read_text()[-3000:]


def _bag_case(ctx: Ctx, cmd: str) -> Path:
    work = ctx.scratch()
    (work / "recording").symlink_to(ctx.sample_bag.path, target_is_directory=True)
    args = (f" --set clip_weights={ctx.weights[0]} --set dino_weights={ctx.weights[1]}"
            " --set device=cpu --set short_side=64 --no-progress")
    _ok(bash(cmd + args, work, timeout=600))
    return work


def run_ros2_run_bag(ctx: Ctx, cmd: str) -> None:
    work = _bag_case(ctx, cmd)
    assert (work / "segmented" / "metadata.yaml").is_file()
    assert list((work / "overlays" / "camera").glob("*_labels.png"))
    with open(work / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # config/cass.yaml has no prompts: the frames after the bag's prompt message
    names = {r["label"] for r in rows}
    assert {"car", "sun", "wheel", "roof"} <= names, names


def run_python_bag(ctx: Ctx, cmd: str) -> None:
    if importlib.util.find_spec("cass_ros.cli.bag") is None:
        pytest.skip("cass_ros/cli/bag.py is not there yet (cass_bag's main moves there on the "
                    "bag branch); `ros2 run cass_ros cass_bag` is tested meanwhile")
    work = _bag_case(ctx, cmd)
    assert (work / "segmented2" / "metadata.yaml").is_file()


def run_python_bag_features(ctx: Ctx, cmd: str) -> None:
    """The language features offline: /features on every frame segmented,
    each instance with its embedding."""
    work = _bag_case(ctx, cmd)
    from bag_harness import read_bag

    out = read_bag(work / "features")
    frames = len(out["/cass/camera/segmentation"])
    assert frames and len(out["/cass/camera/features"]) == frames
    instances = [i for _, m in out["/cass/camera/instance_objects"] for i in m.instances]
    assert instances and all(len(i.embedding) for i in instances)


def _fleet_case(ctx: Ctx, cmd: str) -> Path:
    """recordings/ holds the sample bag twice (site_a/mon, site_b/tue)."""
    work = ctx.scratch()
    for name in ("site_a/mon", "site_b/tue"):
        (work / "recordings" / name).parent.mkdir(parents=True, exist_ok=True)
        (work / "recordings" / name).symlink_to(ctx.sample_bag.path, target_is_directory=True)
    args = (f" --set clip_weights={ctx.weights[0]} --set dino_weights={ctx.weights[1]}"
            " --set device=cpu --set short_side=64 --no-progress")
    _ok(bash(cmd + args, work, timeout=600))
    return work


def run_python_fleet(ctx: Ctx, cmd: str) -> None:
    work = _fleet_case(ctx, cmd)
    doc = json.loads((work / "fleet_out" / "fleet.json").read_text())
    assert {b["output"]: b["status"] for b in doc["bags"]} == {"site_a/mon": "done",
                                                               "site_b/tue": "done"}
    assert (work / "fleet_out" / "site_a" / "mon" / "metadata.yaml").is_file()
    assert (work / "fleet_out" / "report.html").is_file()


def run_ros2_run_fleet(ctx: Ctx, cmd: str) -> None:
    work = _fleet_case(ctx, cmd)
    doc = json.loads((work / "fleet_out2" / "fleet.json").read_text())
    assert [b["chunks"] for b in doc["bags"]] == [3, 3]      # 20 frames in chunks of 8
    assert {b["status"] for b in doc["bags"]} == {"done"}


def run_weights_download(ctx: Ctx, cmd: str) -> None:
    cache = ctx.root / "cass_weights"
    offline = (cmd.replace('pretrained="openai"', "pretrained=None")
               .replace("pretrained=True", "pretrained=False")
               .replace("/opt/cass_weights", str(cache)))
    assert offline.count("pretrained=None") == 1 and offline.count("pretrained=False") == 1
    env = ros2_shell.user_env(HF_HUB_OFFLINE="1")
    _ok(bash(offline, REPO, env=env, setup=False, timeout=300))


def _segment_case(ctx: Ctx, cmd: str) -> tuple[Path, subprocess.CompletedProcess]:
    work = ctx.scratch()
    _image(work / "shots" / "dock.png", 1)
    _image(work / "shots" / "aisle.jpg", 2, 40, 72)
    _image(work / "img.jpg", 3)
    tail = f" {ctx.weight_args()} -q"
    if "--device cuda" in cmd:
        tail += " --device cpu"
    return work, _ok(bash(cmd + tail, work, timeout=600))


def _outputs(work: Path, stem: str, probs: bool = False, folder: str = "seg") -> dict[str, Any]:
    import cv2

    seg = work / folder
    doc = json.loads((seg / f"{stem}.json").read_text())
    labels = cv2.imread(str(seg / f"{stem}_labels.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == tuple(doc["size"])
    assert cv2.imread(str(seg / f"{stem}_overlay.png")).shape[:2] == labels.shape
    assert (seg / f"{stem}_probs.npy").is_file() == probs
    return doc


def run_segment_shots(ctx: Ctx, cmd: str) -> None:
    work, _ = _segment_case(ctx, cmd)
    for stem in ("dock", "aisle"):
        doc = _outputs(work, stem)
        assert doc["class_names"] == ["background", "person", "forklift", "pallet"]


def run_segment_preset(ctx: Ctx, cmd: str) -> None:
    work, _ = _segment_case(ctx, cmd)
    doc = _outputs(work, "img", probs=True)
    assert len(doc["class_names"]) == 151  # ADE20K's 150 classes and background
    assert np.load(work / "seg" / "img_probs.npy").shape == (151, 48, 64)


def run_segment_config(ctx: Ctx, cmd: str) -> None:
    work, _ = _segment_case(ctx, cmd)
    doc = _outputs(work, "img")
    assert doc["class_names"] == ["background", "car", "person"]


def run_segment_sets(ctx: Ctx, cmd: str) -> None:
    # two prompt sets: one folder each, as a run with that set alone writes --out
    work, _ = _segment_case(ctx, cmd)
    index = json.loads((work / "seg" / "sets.json").read_text())["sets"]
    assert [(s["folder"], s["class_names"]) for s in index] == [
        ("set_01", ["background", "person", "forklift"]),
        ("set_02", ["background", "pallet", "box", "door"])]
    for entry in index:
        folder = work / "seg" / entry["folder"]
        assert (folder / "color_table.csv").is_file()
        for stem in ("dock", "aisle"):
            doc = _outputs(work, stem, folder=f"seg/{entry['folder']}")
            assert doc["class_names"] == entry["class_names"]


def run_library(ctx: Ctx, code: str) -> None:
    work = ctx.scratch()
    _image(work / "frame.png", 4)
    old = '{"device": "cuda", '
    assert old in code
    code = code.replace(old, f'{{"device": "cpu", "clip_weights": "{ctx.weights[0]}", '
                             f'"dino_weights": "{ctx.weights[1]}", "short_side": 64, ')
    code += ("\nassert result.labels.shape == (48, 64)\n"
             "assert list(result.class_names) == ['background', 'person', 'forklift', 'pallet']\n"
             "assert result.probs.shape == (4, 48, 64)\n"
             "assert {o['label'] for o in result.objects()} == {'person', 'forklift', 'pallet'}\n"
             "assert 'total' in result.timings_ms\n"
             # the two halves: the last prompt set decoded on the kept features
             "assert answer.class_names == ['background', 'door handle']\n"
             "assert answer.labels.shape == (48, 64) and answer.prompt_id == 0\n"
             "print('library example ok')\n")
    (work / "example.py").write_text(code)
    proc = _ok(bash("python example.py", work, timeout=300))
    assert "library example ok" in proc.stdout


def run_bench(ctx: Ctx, cmd: str) -> None:
    if "--skip-pipeline" not in cmd:
        # the full-size pipeline once, with two class names, on the CPU
        cmd += " --iters 1 --classes 2 --devices cpu"
    proc = _ok(bash(cmd, REPO, setup=False, timeout=900))
    assert re.search(r"^spectral_speedup_n588=\d", proc.stdout.strip().splitlines()[-1]), proc.stdout
    if "--cpu-kernels torch onednn" in cmd:
        for kernels in ("torch", "onednn"):
            assert re.search(rf"^cpu {kernels} sliding 224/112 +\d", proc.stdout, re.M), proc.stdout


def run_bench_query(ctx: Ctx, cmd: str) -> None:
    proc = _ok(bash(cmd + " --tiny --iters 3 --frames 1", REPO, setup=False, timeout=600))
    assert re.search(r"^\| sliding 32/16 \| decode 3 phrases, output input \| [\d.]+ \| [\d.]+ \|$",
                     proc.stdout, re.M), proc.stdout
    assert re.fullmatch(r"bench_query: whole_p50_ms_3=[\d.]+ sliding_p50_ms_3=[\d.]+",
                        proc.stdout.strip().splitlines()[-1]), proc.stdout


def run_bench_fleet(ctx: Ctx, cmd: str) -> None:
    proc = _ok(bash(cmd, REPO, setup=False, timeout=600))
    assert re.search(r"^\| cass_fleet --workers 2 \| 2 \| 4 \|", proc.stdout, re.M), proc.stdout
    assert re.fullmatch(r"bench_fleet: cass_bag_fps=[\d.]+ fleet1_fps=[\d.]+ fleet2_fps=[\d.]+ "
                        r"overhead1_pct=-?[\d.]+", proc.stdout.strip().splitlines()[-1]), proc.stdout


# The README's cluster block (cass_fleet), in its order.
RAY_AUTH = "export RAY_AUTH_MODE=token"
RAY_HEAD = "ray start --head --port=6379 --num-cpus=0"
RAY_JOIN = "ray start --address=HEAD:6379"
FLEET_CLUSTER = ("python -m cass_ros.cli.fleet /shared/recordings/ --out /shared/fleet_out/ "
                 "--params-file config/cass.yaml --address HEAD:6379 --workers 2")
RAY_STOP = "ray stop"
_RAY_NODE = " --disable-usage-stats --object-store-memory=80000000"


def _pid_namespace() -> str | None:
    """None when ``unshare`` gives this user a PID namespace, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare(1)"
    proc = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "true"],
                          capture_output=True, text=True, timeout=30)
    return None if proc.returncode == 0 else f"unshare --pid: {proc.stderr.strip()[:200]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_naming(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if text.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _cluster(ctx: Ctx) -> dict[str, Any]:
    """The cluster block run once (module docstring): each step's exit
    status and output, the scratch folder, whether anything outlived it."""
    if ctx.cluster is not None:
        return ctx.cluster
    why = _pid_namespace()
    if why:
        pytest.skip(f"the cluster block needs a PID namespace of its own, so that `ray stop` "
                    f"stops no other Ray of this machine: {why}")
    work = ctx.scratch()
    shared = work / "shared"
    for name in ("site_a/mon", "site_b/tue"):
        (shared / "recordings" / name).parent.mkdir(parents=True, exist_ok=True)
        (shared / "recordings" / name).symlink_to(ctx.sample_bag.path, target_is_directory=True)
    temp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))   # short: Ray's Unix sockets
    head = f"127.0.0.1:{_free_port()}"
    steps = [
        ("auth", RAY_AUTH),
        ("head", RAY_HEAD.replace("--port=6379", f"--port={head.split(':')[1]}")
         + f" --temp-dir={temp}/head --include-dashboard=false{_RAY_NODE}"),
        *[(f"join{k}", RAY_JOIN.replace("HEAD:6379", head)
           + f" --num-cpus=1 --temp-dir={temp}/node{k}{_RAY_NODE}") for k in (1, 2)],
        ("fleet", FLEET_CLUSTER.replace("/shared/", f"{shared}/").replace("HEAD:6379", head)
         + f" --set clip_weights={ctx.weights[0]} --set dino_weights={ctx.weights[1]}"
         " --set device=cpu --set short_side=64 --no-progress"),
        ("stop", RAY_STOP),
    ]
    # each step after the set-up, its output and status in temp/; after a
    # failed step only `ray stop` runs
    lines = [f"cd {shlex.quote(str(REPO))} && {ros2_shell.distro_setup_line()}",
             f"cd {shlex.quote(str(work))}", "ok=1"]
    for name, cmd in steps:
        guard = "true" if name == "stop" else '[ "$ok" = 1 ]'
        lines.append(f"if {guard}; then {cmd} > {temp}/{name}.log 2>&1; rc=$?; "
                     f"echo $rc > {temp}/{name}.rc; [ $rc = 0 ] || ok=0; fi")
    # the token the README copies to every machine: one made here, not the
    # user's ~/.ray/auth_token (never written by the test)
    env = ros2_shell.user_env(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_TOKEN=secrets.token_hex(16))
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    try:
        # PID 1 of the namespace is this bash: when it ends, the kernel kills
        # whatever is left in it; --kill-child: and when unshare is killed
        subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                        "bash", "-c", "\n".join(lines)], cwd=work, env=env,
                       capture_output=True, text=True, timeout=900)
        deadline = time.monotonic() + 15
        while _processes_naming(str(temp)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _processes_naming(str(temp))
        ctx.cluster = {"work": work, "shared": shared, "left": left, "steps": {}}
        for name, cmd in steps:
            rc = temp / f"{name}.rc"
            log = temp / f"{name}.log"
            ctx.cluster["steps"][name] = (
                int(rc.read_text()) if rc.is_file() else None, cmd,
                log.read_text(errors="replace") if log.is_file() else "(not run)")
    finally:
        for pid in _processes_naming(str(temp)):   # (none: the namespace's end killed them)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
    return ctx.cluster


def _step_ok(ctx: Ctx, name: str) -> str:
    """The step's output; fails the case, with every step's, when it failed."""
    steps = _cluster(ctx)["steps"]
    rc, cmd, out = steps[name]
    if rc != 0:
        shown = "\n".join(f"--- {n} (exit {r}): {c}\n{o[-2000:]}" for n, (r, c, o) in steps.items())
        pytest.fail(f"{name} exited {rc}\n{shown}")
    return out


def run_ray_auth(ctx: Ctx, cmd: str) -> None:
    _step_ok(ctx, "auth")
    # in force for the steps after it: the joins and the run were let in
    _step_ok(ctx, "fleet")


def run_ray_head(ctx: Ctx, cmd: str) -> None:
    assert "Ray runtime started" in _step_ok(ctx, "head")


def run_ray_join(ctx: Ctx, cmd: str) -> None:
    for k in (1, 2):
        assert "Ray runtime started" in _step_ok(ctx, f"join{k}")


def run_fleet_cluster(ctx: Ctx, cmd: str) -> None:
    _step_ok(ctx, "fleet")
    out = _cluster(ctx)["shared"] / "fleet_out"
    doc = json.loads((out / "fleet.json").read_text())
    assert {b["output"]: b["status"] for b in doc["bags"]} == {"site_a/mon": "done",
                                                               "site_b/tue": "done"}
    nodes = [n for b in doc["bags"] for n in b["nodes"]]
    assert len(nodes) == 2 and len(set(nodes)) == 2, nodes   # a bag on each joined node
    for name in ("site_a/mon", "site_b/tue"):
        assert (out / name / "metadata.yaml").is_file()
    assert not (out / ".fleet_tmp").exists()


def run_ray_stop(ctx: Ctx, cmd: str) -> None:
    out = _step_ok(ctx, "stop")
    assert re.search(r"Stopped all \d+ Ray processes", out), out
    assert not _cluster(ctx)["left"], "Ray processes outlived the cluster block's namespace"


@dataclass(frozen=True)
class Case:
    how: str                                  # what the test does with the command
    run: Callable[[Ctx, str], None]
    ros2: bool = False                        # needs ros2cli (`ros2 ...`)
    ros: bool = False                         # needs rclpy and the built messages


CASES: dict[str, Case] = {
    "make demo": Case("DEMO_OUT and DEMO_ARGS='--weights random' (no download); install/ as built",
                      run_make_demo, ros=True),
    "make test": Case("dry run (make -n): it is the command that runs this test", run_make_test),
    "source .venv/bin/activate && export AMENT_PREFIX_PATH=$VIRTUAL_ENV && source install/setup.bash":
        Case("the preamble of every other case; checks python, cass_ros and ros2 come from "
             ".venv and install/", run_setup),
    "colcon build --packages-select cass_ros && source install/setup.bash":
        Case("in a scratch workspace with this repository in src/, the venv as the ROS install",
             run_colcon_workspace, ros=True),
    'ros2 launch cass_ros cass.launch.py image_topic:=/front/image_raw prompts:="person|worker, '
    'forklift, pallet"':
        Case("+ params_file:=<config/cass.yaml with tiny weights, short side 64> device:=cpu",
             run_launch, ros2=True, ros=True),
    "ros2 topic pub --once /cass/prompts std_msgs/String \"data: 'person|pedestrian, car; bicycle'\"":
        Case("as typed, against the launched node", run_topic_pub, ros2=True, ros=True),
    "ros2 topic echo --once --qos-durability transient_local --qos-reliability reliable "
    "/cass/classes":
        Case("+ --no-daemon --spin-time 5", run_topic_echo, ros2=True, ros=True),
    "ros2 topic echo --once --qos-durability transient_local --qos-reliability reliable "
    "/cass/front/label_info":
        Case("+ --no-daemon --spin-time 5; the class map of the table in force",
             run_label_info_echo, ros2=True, ros=True),
    "ros2 param set /cass_node prompts \"['forklift', 'pallet']\"":
        Case("+ --no-daemon --timeout 20", run_param_set, ros2=True, ros=True),
    "ros2 param get /cass_node prompts":
        Case("+ --no-daemon --timeout 20", run_param_get, ros2=True, ros=True),
    'install/cass_ros/lib/cass_ros/cass_node --ros-args --params-file config/cass.yaml '
    '-p prompts:="[car, person]"':
        Case("+ -p tiny weights, device cpu, short side 64, -r __ns:=/readme_by_path; "
             "Ctrl-C exits 0", run_node_by_path, ros=True),
    "ros2 run cass_ros cass_bag recording/ --out segmented/ --params-file config/cass.yaml "
    "--overlays overlays/ --summary summary.csv":
        Case("recording/ = the sample bag; + --set tiny weights, device cpu, short side 64",
             run_ros2_run_bag, ros2=True),
    "python -m cass_ros.cli.bag recording/ --out segmented2/ --params-file config/cass.yaml "
    "--set 'prompts=[car, person]'":
        Case("recording/ = the sample bag; + --set tiny weights, device cpu, short side 64",
             run_python_bag),
    "python -m cass_ros.cli.bag recording/ --out features/ --params-file config/cass.yaml "
    "--set instances=true --set publish_features=true --set instance_embeddings=true":
        Case("recording/ = the sample bag; + --set tiny weights, device cpu, short side 64",
             run_python_bag_features),
    "python -m cass_ros.cli.fleet recordings/ --out fleet_out/ --params-file config/cass.yaml "
    "--set 'prompts=[car, person]' --report":
        Case("recordings/ = the sample bag twice; + --set tiny weights, device cpu, short side 64",
             run_python_fleet),
    ".venv/bin/python benchmarks/bench_fleet.py --bags 2 --frames 2":
        Case("as typed (tiny models); the table and the last line", run_bench_fleet),
    "ros2 run cass_ros cass_fleet recordings/ --out fleet_out2/ --params-file config/cass.yaml "
    "--chunk-frames 8 --workers 2":
        Case("recordings/ = the sample bag twice; + --set tiny weights, device cpu, short side 64",
             run_ros2_run_fleet, ros2=True),
    "ros2 run cass_ros cass_segment shots/ --out seg/ --prompts \"person|worker, forklift, pallet\"":
        Case("shots/ = two small images; + --set tiny weights", run_segment_shots, ros2=True),
    "ros2 run cass_ros cass_segment img.jpg --out seg/ --preset ade20k --device cuda --save-probs":
        Case("+ --set tiny weights --device cpu (no GPU)", run_segment_preset, ros2=True),
    'ros2 run cass_ros cass_segment img.jpg --out seg/ --config config/cass.yaml --prompts "car, '
    'person" --set attention=vanilla --set short_side=448':
        Case("+ --set tiny weights", run_segment_config, ros2=True),
    "python -m cass_ros.cli.segment shots/ --out seg/ --prompts \"person|worker, forklift, pallet\"":
        Case("shots/ = two small images; + --set tiny weights", run_segment_shots),
    ".venv/bin/python benchmarks/bench_segmenter.py":
        Case("+ --iters 1 --classes 2 --devices cpu", run_bench),
    ".venv/bin/python benchmarks/bench_segmenter.py --cpu-kernels torch onednn":
        Case("+ --iters 1 --classes 2 --devices cpu", run_bench),
    ".venv/bin/python benchmarks/bench_segmenter.py --skip-pipeline": Case("as typed", run_bench),
    'python -m cass_ros.cli.segment shots/ --out seg/ --prompts "person|worker, forklift" '
    '--prompts "pallet, box; door"':
        Case("shots/ = two small images; + --set tiny weights", run_segment_sets),
    ".venv/bin/python benchmarks/bench_query.py":
        Case("+ --tiny --iters 3 --frames 1 (the tiny models: seconds)", run_bench_query),
    RAY_AUTH: Case("in the cluster block's shell; RAY_AUTH_TOKEN: a token made for the test "
                   "(the copied ~/.ray/auth_token)", run_ray_auth),
    RAY_HEAD: Case("the cluster block, once (module docstring): a free port, --temp-dir here",
                   run_ray_head),
    RAY_JOIN: Case("twice, HEAD 127.0.0.1, + --num-cpus=1 --temp-dir here", run_ray_join),
    FLEET_CLUSTER: Case("/shared/ = a folder here, recordings/ the sample bag twice; + --set "
                        "tiny weights, device cpu, short side 64; a bag on each joined node",
                        run_fleet_cluster),
    RAY_STOP: Case("as typed, in the cluster block's PID namespace: stops its three nodes",
                   run_ray_stop),
}


def _case_key(command: str) -> str:
    # a heredoc is filed under its first line
    return command.split("\n", 1)[0] if "<<" in command.split("\n", 1)[0] else command


WEIGHTS_KEY = ".venv/bin/python - <<'EOF'"
CASES[WEIGHTS_KEY] = Case("pretrained=None/False, cache folder here, HF_HUB_OFFLINE=1 (no network)",
                          run_weights_download)


def test_every_readme_command_has_a_case():
    commands = [_case_key(c) for c in readme_commands()]
    missing = [c for c in commands if c not in CASES]
    stale = [k for k in CASES if k not in commands]
    assert not missing, f"README commands this test does not know (add them to CASES): {missing}"
    assert not stale, f"CASES entries no longer in the README: {stale}"
    assert len(readme_blocks("python")) == 1


def test_module_paths_the_readme_names_exist():
    """`cass_ros/...py` paths and `cass_ros.x.y` names in the README's text."""
    text = (REPO / "README.md").read_text()
    for path in set(re.findall(r"`(cass_ros/[\w/]+\.py)`", text)):
        assert (REPO / path).is_file(), path
    for name in set(re.findall(r"`(cass_ros(?:\.\w+)+)", text)):
        module, attr = name, None
        if importlib.util.find_spec(module.rsplit(".", 1)[0]) and not _is_module(module):
            module, attr = name.rsplit(".", 1)
        if module == "cass_ros.cli.bag" and not _is_module(module):
            continue  # pending: see run_python_bag
        assert _is_module(module), name
        if attr:
            assert hasattr(importlib.import_module(module), attr), name


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _params() -> list[Any]:
    out = []
    for command in readme_commands():
        key = _case_key(command)
        label = re.sub(r"\W+", "_", key)[:60].strip("_")
        out.append(pytest.param(command, key, id=label))
    return out


@pytest.mark.parametrize("command,key", _params())
def test_readme_command(command, key, ctx):
    case = CASES.get(key)
    if case is None:
        pytest.fail(f"no case for README command {key!r}")
    if case.ros2 and ros2_shell.have_ros2cli():
        pytest.skip(ros2_shell.have_ros2cli())
    if case.ros:
        from node_harness import ros_available

        if ros_available():
            pytest.skip(ros_available())
    case.run(ctx, command)


def test_readme_library_example(ctx):
    (_, code), = readme_blocks("python")
    run_library(ctx, code)

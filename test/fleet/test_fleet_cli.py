"""cass_fleet's inputs, arguments and manifest rules without running a
model (docs/ros-interface.md, cass_fleet), and one real Ctrl-C: a
subprocess with its own local Ray stopped by SIGINT mid-run, then resumed,
leaving no Ray session folder behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cass_ros.cli import fleet as fleet_cli
from cass_ros.fleet import chunks, inputs, manifest


def _bag(path: Path, suffix: str = ".mcap") -> Path:
    """Enough of a bag for the search (its reading is not tried here)."""
    path.mkdir(parents=True)
    (path / "metadata.yaml").write_text("rosbag2_bagfile_information: {}\n")
    (path / f"{path.name}_0{suffix}").write_bytes(b"")
    return path


def test_bags_are_found_named_and_listed(tmp_path):
    root = tmp_path / "data"
    a = _bag(root / "robot1" / "mon")
    b = _bag(root / "robot1" / "tue", ".db3")
    c = _bag(root / "robot2" / "deep" / "wed")
    (root / "robot2" / "deep" / "wed" / "inner").mkdir()            # never looked into
    crashed = root / "robot2" / "crash"
    crashed.mkdir()
    (crashed / "rec_0.mcap").write_bytes(b"")                        # no metadata: a bag
    single = root / "loose" / "one.mcap"
    single.parent.mkdir()
    single.write_bytes(b"")
    (root / "empty").mkdir()
    _bag(root / "robot1" / "segmented" / "mon")                       # DIR: not searched
    listing = tmp_path / "lists" / "bags.txt"
    listing.parent.mkdir()
    listing.write_text("# the second robot\n../data/robot2   # searched\n\n")
    got = inputs.collect([str(root / "robot1"), f"@{listing}", str(single), str(a)],
                         out=root / "robot1" / "segmented")
    assert [(g.path, g.output) for g in got] == [
        (a, "robot1/mon"), (b, "robot1/tue"), (crashed, "robot2/crash"),
        (c, "robot2/deep/wed"), (single, "loose/one")]
    # one bag: named after itself
    assert [g.output for g in inputs.collect([str(c)])] == ["wed"]
    # a folder with no bag is kept, to fail as cass_bag says
    assert [g.output for g in inputs.collect([str(root / "empty"), str(a)])] == ["empty", "robot1/mon"]


@pytest.mark.parametrize("args, words", [
    (["missing_bag"], "input missing_bag does not exist"),
    (["@missing.txt"], "cannot read the input list"),
    (["@empty.txt"], "names no input"),
    (["clash/rec", "clash/rec.db3"], "would both write DIR/rec"),
])
def test_unusable_inputs_exit_2(tmp_path, capsys, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    _bag(tmp_path / "clash" / "rec")
    (tmp_path / "clash" / "rec.db3").write_bytes(b"")
    assert fleet_cli.main([*args, "--out", str(tmp_path / "out")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("cass_fleet: error: ") and words in line, line


@pytest.mark.parametrize("flags, words", [
    (["--batch", "0"], "--batch must be >= 1"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--max-attempts", "0"], "--max-attempts must be >= 1"),
    (["--ray-temp-dir", "/tmp/x", "--address", "auto"], "--ray-temp-dir is for the local Ray"),
    (["--set", "no_such_parameter=1"], "unknown parameter(s) no_such_parameter"),
])
def test_bad_settings_exit_2_before_ray(tmp_path, capsys, flags, words):
    bag = _bag(tmp_path / "bag")
    assert fleet_cli.main([str(bag), "--out", str(tmp_path / "out"), *flags]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert words in line, line


def test_an_output_folder_of_something_else_is_refused(tmp_path, capsys):
    bag = _bag(tmp_path / "bag")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me\n")
    assert fleet_cli.main([str(bag), "--out", str(tmp_path / "out"),
                           "--set", "prompts=[car]"]) == 2
    assert "holds no fleet.json" in capsys.readouterr().err
    assert fleet_cli.main([str(bag), "--out", str(bag / "out"), "--set", "prompts=[car]"]) == 2
    assert "overlap" in capsys.readouterr().err


def test_help_and_bad_flags_do_not_import_ray():
    code = ("import sys\nfrom cass_ros.cli import fleet\n"
            "for argv in (['--help'], ['x', '--out', 'y', '--no-such-flag']):\n"
            "    try:\n        fleet.main(argv)\n    except SystemExit as e:\n"
            "        assert e.code in (0, 2), e.code\n"
            "print(sorted(m for m in ('ray', 'torch', 'matplotlib') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_fingerprint_differences_are_named():
    old = {"parameters": {"a": 1, "b": [1, 2]}, "weights": {"clip": {"bytes": 3}}}
    new = {"parameters": {"a": 1, "b": [1, 3], "c": 0}, "weights": {"clip": {"bytes": 4}}}
    assert manifest.differences(old, new) == ["parameters.b", "parameters.c", "weights.clip.bytes"]
    assert manifest.differences(old, old) == []


def test_frame_ranges():
    assert chunks.frame_ranges(10, 0) == [(0, None)]
    assert chunks.frame_ranges(10, 10) == [(0, None)]
    assert chunks.frame_ranges(10, 4) == [(0, 4), (4, 8), (8, None)]
    assert chunks.frame_ranges(8, 4) == [(0, 4), (4, None)]


def test_manifest_writes_are_atomic(tmp_path):
    m = manifest.Manifest.open(tmp_path / "out", {"x": 1})
    bag = inputs.BagInput(tmp_path / "b", "b")
    m.set_status(bag, "running")
    assert json.loads((tmp_path / "out" / "fleet.json").read_text())["bags"][0]["status"] == "running"
    m.set_status(bag, "failed", reason="why")
    m.set_status(bag, "done", frames=3)
    rec = json.loads((tmp_path / "out" / "fleet.json").read_text())["bags"][0]
    assert rec["status"] == "done" and "reason" not in rec and rec["frames"] == 3
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["fleet.json"]  # no temp left


# ---------------------------------------------------------------- a real Ctrl-C or SIGTERM


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_leaves_a_manifest_to_resume_from(tmp_path, sample_bag_module, bag_params_file,
                                                   signum):
    """cass_fleet in a subprocess (its own local Ray), SIGINT (Ctrl-C) or
    SIGTERM (a scheduler, kill) once a bag is done: exit 130, the manifest
    "interrupted", nothing done that is not; the same command then
    finishes every bag."""
    pytest.importorskip("ray")
    for name in ("a", "b", "c"):
        sample_bag_module.write_sample_bag(tmp_path / "in" / name, frames=3)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cass_ros.cli.fleet", str(tmp_path / "in"), "--out", str(out),
           "--params-file", str(bag_params_file), "--no-progress"]
    # TMPDIR: where the run's own local Ray keeps its session folders, and
    # removes them (a short path: Ray's Unix sockets live there)
    ray_tmp = Path(tempfile.mkdtemp(prefix="cf", dir="/tmp"))
    env = dict(os.environ, RAY_ADDRESS="", TMPDIR=str(ray_tmp))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                doc = json.loads((out / "fleet.json").read_text())
            except (OSError, ValueError):
                doc = {"bags": []}
            if any(b["status"] == "done" for b in doc["bags"]):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    doc = json.loads((out / "fleet.json").read_text())
    assert doc["state"] == "interrupted"
    statuses = {b["output"]: b["status"] for b in doc["bags"]}
    assert "done" in statuses.values() and set(statuses.values()) - {"done"}, statuses
    for name, status in statuses.items():
        assert (out / name / "metadata.yaml").exists() == (status == "done"), (name, status)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((out / "fleet.json").read_text())
    assert doc["state"] == "finished"
    assert {b["status"] for b in doc["bags"]} == {"done"}
    assert all(b["frames"] == 3 for b in doc["bags"])
    assert not list(ray_tmp.glob("cass_fleet_ray_*")), list(ray_tmp.iterdir())
    shutil.rmtree(ray_tmp, ignore_errors=True)


# A driver that sends itself the signal at one point before any bag runs:
# while the inputs are searched, while the bags are planned (the manifest
# written), or inside ray.init once the local Ray's processes are up.
_EARLY = """
import os, sys
sig, stage = int(sys.argv[1]), sys.argv[2]

def hit():
    os.kill(os.getpid(), sig)

if stage == "inputs":
    from cass_ros.fleet import inputs
    real = inputs.find_bags
    def find_bags(*a, **k):
        hit()
        return real(*a, **k)
    inputs.find_bags = find_bags
elif stage == "plan":
    from cass_ros.bag import tool
    real, seen = tool.plan_bag, []
    def plan_bag(*a, **k):
        seen.append(1)
        if len(seen) == 2:
            hit()
        return real(*a, **k)
    tool.plan_bag = plan_bag
else:
    import ray._private.worker as w
    real = w.connect
    def connect(*a, **k):
        hit()
        return real(*a, **k)
    w.connect = connect
from cass_ros.cli import fleet
sys.exit(fleet.main(sys.argv[3:]))
"""


def _processes_using(path: Path) -> list[str]:
    """Command lines of live processes that name ``path`` (a Ray left running)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmd:
            found.append(cmd)
    return found


@pytest.mark.parametrize("stage", ["inputs", "plan", "ray.init"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_before_the_workers_start_ends_as_cleanly(tmp_path, sample_bag_module,
                                                           bag_params_file, signum, stage):
    """SIGINT or SIGTERM before any bag runs (inputs searched, bags planned,
    inside ray.init): exit 130 with the one "interrupted" line and no
    traceback; the manifest, once written, "interrupted" with nothing done
    and no partial output; no Ray process or session folder left. After
    the one inside ray.init the same command does every bag."""
    pytest.importorskip("ray")
    for name in ("a", "b"):
        sample_bag_module.write_sample_bag(tmp_path / "in" / name, frames=2)
    out = tmp_path / "out"
    args = [str(tmp_path / "in"), "--out", str(out), "--params-file", str(bag_params_file),
            "--no-progress"]
    ray_tmp = Path(tempfile.mkdtemp(prefix="cf", dir="/tmp"))
    env = dict(os.environ, RAY_ADDRESS="", TMPDIR=str(ray_tmp))
    try:
        proc = subprocess.run([sys.executable, "-c", _EARLY, str(int(signum)), stage, *args],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 130, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert proc.stderr.strip().splitlines()[-1] == (
            "cass_fleet: interrupted; run the same command again to resume")
        if stage == "inputs":
            assert not out.exists()
        else:
            doc = json.loads((out / "fleet.json").read_text())
            assert doc["state"] == "interrupted" and doc["finished"] is None
            assert {b["status"] for b in doc["bags"]} <= {"pending"}, doc["bags"]
            assert sorted(p.name for p in out.iterdir()) == ["fleet.json"]
        deadline = time.monotonic() + 15
        while _processes_using(ray_tmp) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _processes_using(ray_tmp)
        assert not list(ray_tmp.iterdir()), list(ray_tmp.iterdir())
        if stage == "ray.init" and signum == signal.SIGTERM:
            done = subprocess.run([sys.executable, "-m", "cass_ros.cli.fleet", *args],
                                  capture_output=True, text=True, env=env, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            doc = json.loads((out / "fleet.json").read_text())
            assert doc["state"] == "finished" and {b["status"] for b in doc["bags"]} == {"done"}
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_cluster_that_wants_a_token_is_one_line_with_the_fix():
    """What ray.init raises for a cluster started with token authentication
    (Ray's default for `ray start --head` since 2.59) when this side has no
    RAY_AUTH_MODE=token: one line naming the address and what to set."""
    from cass_ros.fleet import runner

    try:
        try:
            raise RuntimeError("Failed to connect to GCS. Last connection error: ... "
                               "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken")
        except RuntimeError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from cause
    except ConnectionError as e:
        line = runner._connect_error("head:6379", e)
    assert "\n" not in line and line.startswith("cannot connect to the Ray cluster at head:6379")
    assert "RAY_AUTH_MODE=token" in line and "~/.ray/auth_token" in line
    plain = runner._connect_error("head:6379", ConnectionError("Failed to connect"))
    assert "RAY_AUTH_MODE" not in plain

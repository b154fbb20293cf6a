"""cass_fleet on a real multi-node Ray cluster on this machine
(``ray.cluster_utils.Cluster``: a head without CPUs and two worker nodes of
one CPU each; docs/ros-interface.md, cass_fleet; README, "cass_fleet",
Cluster), driven through the command line with ``--address``:

- the work lands on both worker nodes (the manifest's ``nodes``) and the
  outputs equal cass_bag's (the agreement rule: other processes);
- a bag that kills its worker process each time (fleet_crash_hook) is
  tried ``--max-attempts`` times, then recorded failed, the others done;
  a chunk that kills its worker once is redone alone, the bag joined
  equal to cass_bag's;
- a bag failed that way is given fresh attempts by ``--retry-failed``
  (not the failed run's count), and finishes;
- a driver stopped by SIGTERM and started again finishes on the cluster,
  the bags done before kept;
- a worker node removed (killed, not drained) while it segments a bag: the
  run ends on the node left, the bag redone from its start (``attempts``
  2, ``lost`` naming the node), exit 0, its output equal to cass_bag's.

One cluster for the module (it takes ~10 s to start); the last test
removes a node, so it runs last.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fleet_crash_hook import CRASH_PREFIX, MARKERS, ONCE_PREFIX, THRICE_PREFIX
from fleet_helpers import assert_same_bag, bag_order

import cass_ros
from cass_ros.bag import tool as bag_tool
from cass_ros.cli import fleet as fleet_cli

pytest.importorskip("ray")

STORE = 80 * 1024 * 1024          # object store per node: the jobs pass no frames through it
# A node whose raylet is gone is declared dead after ~1 s, not Ray's default ~30 s.
FAST_HEALTH_CHECK = {"health_check_period_ms": 250, "health_check_failure_threshold": 4,
                     "health_check_initial_delay_ms": 0}


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized()
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "object_store_memory": STORE,
        "_system_config": FAST_HEALTH_CHECK})
    workers = [c.add_node(num_cpus=1, object_store_memory=STORE) for _ in range(2)]
    c.wait_for_nodes()
    yield c, workers
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def sample(tmp_path_factory, sample_bag_module):
    return tmp_path_factory.mktemp("cluster"), sample_bag_module


def _bags(sample, names: dict[str, int]) -> Path:
    base, module = sample
    root = base / f"in_{len(list(base.iterdir()))}"
    for name, frames in names.items():
        module.write_sample_bag(root / name, frames=frames)
    return root


def _fleet(root: Path, out: Path, params: Path, address: str, *more: str) -> int:
    return fleet_cli.main([str(root), "--out", str(out), "--params-file", str(params),
                           "--address", address, "--workers", "2", "--no-progress", *more])


def _manifest(out: Path) -> dict[str, dict]:
    return {b["output"]: b for b in json.loads((out / "fleet.json").read_text())["bags"]}


def _assert_like_cass_bag(root: Path, out: Path, name: str, params: Path, tmp: Path) -> Path:
    """DIR/<name> equals cass_bag's output of the same bag; returns that one."""
    ref = tmp / "ref" / name
    bag_tool.run(bag_tool.BagToolOptions(input_bag=root / name, out=ref, params_file=params,
                                         progress=False))
    assert assert_same_bag(out / name, ref) > 0, name
    return ref


def test_work_lands_on_both_nodes_and_equals_cass_bag(cluster, sample, bag_params_file,
                                                      tmp_path):
    c, workers = cluster
    root = _bags(sample, {"a": 2, "b": 2, "c": 2, "d": 2})
    out = tmp_path / "out"
    assert _fleet(root, out, bag_params_file, c.address) == 0
    bags = _manifest(out)
    assert sorted(bags) == ["a", "b", "c", "d"]
    for b in bags.values():
        assert b["status"] == "done" and b["attempts"] == 1 and b["lost"] == [], b
        assert len(b["nodes"]) == 1
    assert {b["nodes"][0] for b in bags.values()} == {w.node_id for w in workers}
    for name in bags:
        _assert_like_cass_bag(root, out, name, bag_params_file, tmp_path)
    assert not (out / ".fleet_tmp").exists()


def _crash_hook(monkeypatch, markers: Path) -> None:
    """The driver's next ray.init gives its workers fleet_crash_hook."""
    # the hook's folder, and this tree's cass_ros before an installed one
    code = Path(cass_ros.__file__).parents[1]
    path = f"{Path(__file__).parent}:{code}:{os.environ.get('PYTHONPATH', '')}"
    markers.mkdir()
    env = {"runtime_env": {"worker_process_setup_hook": "fleet_crash_hook.install",
                           "env_vars": {"PYTHONPATH": path, MARKERS: str(markers)}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(env))


def test_a_lost_chunk_is_redone_and_a_bag_that_kills_its_worker_fails(
        cluster, sample, bag_params_file, tmp_path, monkeypatch):
    """One run, --chunk-frames 3 --max-attempts 2: a bag that kills its
    worker each time fails after two attempts; the second chunk of another
    kills its worker once, is redone alone (its first chunk kept) and the
    joined bag equals cass_bag's; the bags beside them are done at once."""
    c, workers = cluster
    _crash_hook(monkeypatch, tmp_path / "markers")
    crash, once = f"{CRASH_PREFIX}_x", f"{ONCE_PREFIX}_y"
    root = _bags(sample, {"good1": 2, crash: 3, once: 6, "good2": 2})
    out = tmp_path / "out"
    assert _fleet(root, out, bag_params_file, c.address, "--max-attempts", "2",
                  "--chunk-frames", "3") == 1
    bags = _manifest(out)
    bad = bags[crash]
    assert bad["status"] == "failed" and bad["attempts"] == 2 and len(bad["lost"]) == 2, bad
    assert "worker lost" in bad["reason"] and "2 attempt" in bad["reason"], bad["reason"]
    assert "worker process has died" in bad["reason"], bad["reason"]
    assert {lost["node"] for lost in bad["lost"]} <= {w.node_id for w in workers}
    assert not (out / crash).exists()
    redone = bags[once]
    assert redone["status"] == "done" and redone["chunks"] == 2, redone
    assert redone["attempts"] == 2 and [x["chunk"] for x in redone["lost"]] == [1], redone
    assert redone["frames"] == 6
    assert [p.name for p in (tmp_path / "markers").iterdir()] == [f"{once}.3"]
    ref = _assert_like_cass_bag(root, out, once, bag_params_file, tmp_path)
    assert bag_order(out / once) == bag_order(ref)
    for name in ("good1", "good2"):
        assert bags[name]["status"] == "done" and bags[name]["attempts"] == 1, bags[name]
        assert (out / name / "metadata.yaml").is_file()
    assert not (out / ".fleet_tmp").exists()


def test_a_failed_bag_retried_gets_fresh_attempts(cluster, sample, bag_params_file, tmp_path,
                                                  monkeypatch):
    """A bag whose worker dies on its first three runs: failed after the
    two attempts of --max-attempts 2; --retry-failed gives it two attempts
    again (not the failed run's count): the third loss is redone and the
    bag done, its manifest entry counting this run's attempts and losses
    only, its output equal to cass_bag's."""
    c, workers = cluster
    markers = tmp_path / "markers"
    _crash_hook(monkeypatch, markers)
    bad = f"{THRICE_PREFIX}_z"
    root = _bags(sample, {bad: 3, "fine": 2})
    out = tmp_path / "out"
    assert _fleet(root, out, bag_params_file, c.address, "--max-attempts", "2") == 1
    first = _manifest(out)
    assert first[bad]["status"] == "failed" and first[bad]["attempts"] == 2, first[bad]
    assert len(first[bad]["lost"]) == 2 and "2 attempt" in first[bad]["reason"], first[bad]
    assert first["fine"]["status"] == "done" and first["fine"]["attempts"] == 1
    assert _fleet(root, out, bag_params_file, c.address, "--max-attempts", "2",
                  "--retry-failed") == 0
    again = _manifest(out)
    assert again[bad]["status"] == "done" and "reason" not in again[bad], again[bad]
    assert again[bad]["attempts"] == 2 and len(again[bad]["lost"]) == 1, again[bad]
    assert again[bad]["frames"] == 3
    assert again["fine"] == first["fine"]                    # done before: not run again
    assert sorted(p.name for p in markers.iterdir()) == [f"{bad}.run{n}" for n in (1, 2, 3)]
    _assert_like_cass_bag(root, out, bad, bag_params_file, tmp_path)
    assert not (out / ".fleet_tmp").exists()


def test_an_interrupted_driver_resumes_on_the_cluster(cluster, sample, bag_params_file, tmp_path):
    """cass_fleet --address in a subprocess (a driver of its own, as a user
    runs it) stopped by SIGTERM once a bag is done: exit 130, the manifest
    "interrupted" with each bag's output there exactly when it is done; the
    same command again finishes the rest on the cluster, the bags done
    before not run again, and the cluster is still whole."""
    c, workers = cluster
    root = _bags(sample, {"a": 3, "b": 3, "c": 3, "d": 3})
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cass_ros.cli.fleet", str(root), "--out", str(out),
           "--params-file", str(bag_params_file), "--address", c.address, "--workers", "2",
           "--no-progress"]
    # this tree's cass_ros in the driver (the workers get theirs from the cluster)
    code = str(Path(cass_ros.__file__).parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [code, os.environ.get(
        "PYTHONPATH")])))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if any(b["status"] == "done" for b in _manifest(out).values()):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    doc = json.loads((out / "fleet.json").read_text())
    assert doc["state"] == "interrupted"
    first = _manifest(out)
    statuses = {name: b["status"] for name, b in first.items()}
    assert "done" in statuses.values() and set(statuses.values()) - {"done"}, statuses
    for name, status in statuses.items():
        assert (out / name / "metadata.yaml").exists() == (status == "done"), (name, status)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "fleet.json").read_text())["state"] == "finished"
    again = _manifest(out)
    assert {b["status"] for b in again.values()} == {"done"}, again
    for name, status in statuses.items():
        if status == "done":
            assert again[name] == first[name], name          # not run again
    assert {n for b in again.values() for n in b["nodes"]} <= {w.node_id for w in workers}
    for name in again:
        _assert_like_cass_bag(root, out, name, bag_params_file, tmp_path)
    assert not (out / ".fleet_tmp").exists()


def _remove_the_node_of_a_running_bag(c, workers, out: Path, got: dict) -> None:
    """Watches the manifest; once a bag has run a moment on a worker node,
    kills that node (no drain: its raylet and workers die)."""
    by_id = {w.node_id: w for w in workers}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            bags = _manifest(out)
        except (OSError, ValueError):
            bags = {}
        running = [b for b in bags.values() if b["status"] == "running" and b.get("nodes")]
        if running:
            time.sleep(0.3)             # a few frames into it (of ~3 s)
            got["bag"], got["node"] = running[0]["output"], running[0]["nodes"][0]
            c.remove_node(by_id[got["node"]], allow_graceful=False)
            return
        time.sleep(0.05)


def test_a_node_lost_mid_bag_is_redone_on_the_node_left(cluster, sample, bag_params_file,
                                                        tmp_path):
    c, workers = cluster
    root = _bags(sample, {"p": 30, "q": 30, "r": 4})
    out = tmp_path / "out"
    got: dict = {}
    watcher = threading.Thread(target=_remove_the_node_of_a_running_bag,
                               args=(c, workers, out, got), daemon=True)
    watcher.start()
    assert _fleet(root, out, bag_params_file, c.address) == 0
    watcher.join(timeout=5)
    assert got, "no bag was seen running"
    bags = _manifest(out)
    assert all(b["status"] == "done" for b in bags.values()), bags
    lost = bags[got["bag"]]
    assert lost["attempts"] == 2 and [x["node"] for x in lost["lost"]] == [got["node"]], \
        (got, bags)
    (left,) = {w.node_id for w in workers} - {got["node"]}
    assert lost["nodes"] == [left]
    assert "worker lost" in lost["lost"][0]["reason"] and "node" in lost["lost"][0]["reason"]
    _assert_like_cass_bag(root, out, got["bag"], bag_params_file, tmp_path)
    assert not (out / ".fleet_tmp").exists()

"""Bag fixtures for the tests (a pytest plugin: test/conftest.py lists it in
``pytest_plugins``).

- ``sample_bag`` / ``sample_bag_sqlite``: the sample bag of
  tools/make_sample_bag.py, generated once per session (mcap / sqlite3).
- ``bag_params_file``: a ROS parameters file for the node and the bag tool
  with those weights, shared by both so their outputs can be compared.
- ``cass_node_player``: starts cass_node as a subprocess, plays a bag into it
  over DDS and records every output topic (see bag_player).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from rosbags.rosbag2 import Reader

REPO = Path(__file__).resolve().parents[2]
# The colcon install tree (sourced) holds cass_ros with its generated
# messages: it must win over the source tree, which is only a fallback.
if importlib.util.find_spec("cass_ros") is None:
    sys.path.append(str(REPO))

# After the path set-up above; tools/ is on the path (test/conftest.py).
import bag_player  # noqa: E402

from cass_ros.bag import io as bag_io  # noqa: E402
from cass_ros.bag import tool as bag_tool  # noqa: E402


def _load_script(name: str) -> Any:
    """Import a module from tools/ (not a package) by path."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def sample_bag_module() -> Any:
    return _load_script("make_sample_bag")


@pytest.fixture(scope="session")
def sample_bag(tmp_path_factory: pytest.TempPathFactory, sample_bag_module: Any) -> Any:
    """The sample bag in mcap; returns make_sample_bag.SampleInfo."""
    out = tmp_path_factory.mktemp("bags") / "sample_mcap"
    return sample_bag_module.write_sample_bag(out, storage="mcap")


@pytest.fixture(scope="session")
def sample_bag_sqlite(tmp_path_factory: pytest.TempPathFactory, sample_bag_module: Any) -> Any:
    """The same sample bag in sqlite3."""
    out = tmp_path_factory.mktemp("bags") / "sample_sqlite3"
    return sample_bag_module.write_sample_bag(out, storage="sqlite3")


# Settings shared by the node and the bag tool in the tests: the sample
# scene's prompts, tiny weights on the CPU, a small input side so that a
# frame takes well under a second on two cores. No background names and no
# probability threshold: random weights then spread the pixels over all the
# classes, so comparisons of label images are not trivially all zero.
# image_qos reliable: with Fast DDS's default transports a best-effort
# subscriber loses most 640 x 480 frames sent between two processes (they
# exceed the shared-memory segment and go out as UDP fragments).
TEST_SETTINGS: dict[str, Any] = {
    "device": "cpu",
    "short_side": 224,
    "min_pixels": 1,
    "publish_color": True,
    "background_classes": [],
    "prob_threshold": 0.0,
    "image_qos": "reliable",
}


def write_params_file(path: Path, settings: dict[str, Any], node_name: str = "/**") -> Path:
    """A ROS parameters file (``node: ros__parameters: {...}``); ``/**``
    applies to the node whatever its name."""
    path.write_text(yaml.safe_dump({node_name: {"ros__parameters": settings}},
                                   default_flow_style=False))
    return path


@pytest.fixture(scope="session")
def bag_settings(tiny_weights: tuple[str, str], sample_bag_module: Any) -> dict[str, Any]:
    clip, dino = tiny_weights
    return dict(TEST_SETTINGS, clip_weights=clip, dino_weights=dino,
                prompts=list(sample_bag_module.INITIAL_PROMPTS))


@pytest.fixture(scope="session")
def bag_params_file(tmp_path_factory: pytest.TempPathFactory,
                    bag_settings: dict[str, Any]) -> Path:
    return write_params_file(tmp_path_factory.mktemp("params") / "cass_test.yaml", bag_settings)


def install_tree_ready() -> str | None:
    """None when the node can be started (colcon install tree sourced), else why not."""
    if importlib.util.find_spec("rclpy") is None:
        return "rclpy is not installed"
    try:
        from cass_ros.msg import ObjectPresenceArray  # noqa: F401
    except ImportError:
        return ("cass_ros.msg is not importable: build with `make build` and source "
                "install/setup.bash (with AMENT_PREFIX_PATH=<venv>)")
    if not os.environ.get("AMENT_PREFIX_PATH"):
        return "AMENT_PREFIX_PATH is not set: source install/setup.bash"
    return None


# ---------------------------------------------------------------------------
# Offline: the bag tool on the sample bag


@dataclass
class OfflineRun:
    out: Path
    overlays: Path
    summary: Path
    report: Any


@pytest.fixture(scope="session")
def offline_run(tmp_path_factory: pytest.TempPathFactory, sample_bag: Any,
                bag_params_file: Path) -> OfflineRun:
    """cass_bag on the sample bag (raw topic) with the test parameters."""
    base = tmp_path_factory.mktemp("offline")
    opts = bag_tool.BagToolOptions(
        input_bag=sample_bag.path, out=base / "out_bag", params_file=bag_params_file,
        overlays=base / "overlays", summary=base / "summary.json", progress=False)
    report = bag_tool.run(opts)
    return OfflineRun(opts.out, base / "overlays", base / "summary.json", report)


# The language features on (docs/ros-interface.md, "Language features"):
# the features topic, instance embeddings, and re-identification with
# track_max_missed 1, so that a track missed two frames ends and only
# re-identification can give its id back within the sample bag's 20 frames.
FEATURE_SETTINGS: dict[str, Any] = {
    "publish_features": True, "instances": True, "instance_min_pixels": 20,
    "track_min_hits": 2, "track_max_missed": 1, "instance_embeddings": True,
    "track_reid_seconds": 5.0}


@dataclass
class FeaturesRun:
    out: Path
    params: Path
    settings: dict[str, Any]
    report: Any


@pytest.fixture(scope="session")
def features_run(tmp_path_factory: pytest.TempPathFactory, sample_bag: Any,
                 bag_settings: dict[str, Any]) -> FeaturesRun:
    """cass_bag on the sample bag (raw topic) with FEATURE_SETTINGS; the
    parameters file is the one the live node gets too (test_bag_live.py)."""
    base = tmp_path_factory.mktemp("offline_features")
    settings = dict(bag_settings, **FEATURE_SETTINGS)
    params = write_params_file(base / "cass_features.yaml", settings)
    opts = bag_tool.BagToolOptions(input_bag=sample_bag.path, out=base / "out_bag",
                                   params_file=params, topics=["/camera/image_raw"],
                                   progress=False)
    return FeaturesRun(opts.out, params, settings, bag_tool.run(opts))


def read_bag(path: Path) -> dict[str, list[tuple[int, Any]]]:
    """{topic: [(bag time, message)]} of a bag, with cass_ros's typestore
    (the bag's own definitions of our messages where it embeds them)."""
    out: dict[str, list[tuple[int, Any]]] = {}
    with Reader(path) as reader:
        ts = bag_io.reading_typestore(reader.connections)
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, ts.deserialize_cdr(raw, conn.msgtype)))
    return out


# ---------------------------------------------------------------------------
# Live: cass_node in a subprocess, the bag played into it over DDS


@dataclass
class LiveRun:
    """One play of a bag into a fresh cass_node."""

    recording: Any            # bag_player.Recording
    node_log: str
    input_stamps: list[int]   # header stamps of the images published, in order
    end_ns: int               # monotonic time of the last publish

    def objects(self, camera: str = "camera") -> list[Any]:
        return self.recording.messages(f"/cass/{camera}/objects")

    def frame_index(self, msg: Any) -> int:
        return self.input_stamps.index(bag_io.stamp_ns(msg.header.stamp))


def diagnostic_counters(recording: Any, camera: str = "camera") -> dict[str, str]:
    """The node's last /diagnostics key-values for ``camera`` ({} if none)."""
    msgs = recording.messages("/diagnostics")
    for arr in reversed(msgs):
        for st in arr.status:
            if st.name.endswith(f"camera {camera}"):
                return {kv.key: kv.value for kv in st.values}
    return {}


def _diagnostics_caught_up(recording: Any) -> bool:
    done = sum(r.topic == "/cass/camera/objects" for r in recording.received)
    counters = diagnostic_counters(recording)
    return bool(counters) and int(counters.get("processed", -1)) >= done


@pytest.fixture(scope="session")
def play_into_node(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A function that starts cass_node (parameters file + overrides), waits
    until it is ready, plays a bag into it and records every output topic,
    stops the node and returns a LiveRun. Skips without an install tree."""
    reason = install_tree_ready()
    if reason:
        pytest.skip(reason)
    counter = iter(range(1000))

    def run(bag: Path, params_file: Path, *, topics: list[str], rate: float = 1.0,
            lockstep: bool = False, parameters: dict[str, Any] | None = None,
            cameras: tuple[str, ...] = ("camera",), extra_topics: dict[str, str] | None = None,
            settle_s: float = 2.0) -> LiveRun:
        domain = bag_player.free_domain_id()
        log_path = tmp_path_factory.mktemp("node") / f"cass_node_{next(counter)}.log"
        node = bag_player.NodeProcess(params_file, log_path, domain, dict(parameters or {}))
        node.start()
        try:
            with bag_player.BagPlayer(domain) as player:
                player.record(player.node_output_topics(cameras))
                if extra_topics:
                    player.record(extra_topics)
                player.advertise(bag, topics)
                node_inputs = [t for t in topics if "image" in t or t.endswith("prompts")]
                player.wait_ready(node, node_inputs, timeout=180.0)
                rec = player.play(bag, topics, rate=rate, lockstep=lockstep, node=node,
                                  frame_timeout=60.0)
                end = max(p.time_ns for p in rec.published)
                if not lockstep:
                    # The newest frame may still be on its way (a lost UDP
                    # fragment is re-sent after the next heartbeat, ~3 s).
                    last = [p.stamp_ns for p in rec.published if p.stamp_ns is not None][-1]
                    player.wait_for(lambda r: any(bag_player.header_stamp(x.data) == last
                                                  for x in r.received
                                                  if x.topic.endswith("/objects")), 30.0)
                player.settle(quiet_s=settle_s, timeout=120.0)
                if extra_topics and "/diagnostics" in extra_topics:
                    # until a /diagnostics message counts every output seen
                    player.wait_for(_diagnostics_caught_up, timeout=20.0)
        finally:
            node.stop()
        stamps = [p.stamp_ns for p in rec.published if p.stamp_ns is not None]
        return LiveRun(rec, node.log_text(), stamps, end)

    return run

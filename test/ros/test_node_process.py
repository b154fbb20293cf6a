"""cass_node as users start it: the installed executable with
``--ros-args --params-file config/cass.yaml -p ...`` in its own process.

The ``-p`` arguments come from cass_ros.ros.wiring.launch_args, which the launch
file uses too, so this is the launch file's start-up path where launch
itself is not installed. Covers compressed input, a flood of frames with
flat memory, SIGINT, and the one-line start-up failures (no prompts is
not one: test_node_waiting.py).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from node_harness import (CONFIG, Harness, ros_available, rss_kib, stamp_ns, start_node,
                          stop_node, unique_namespace)

from cass_ros.ros.wiring.launch_args import node_overrides, ros_args

_WHY = ros_available()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")


def _compressed(rgb: np.ndarray, stamp: int, fmt: str = "jpeg") -> Any:
    from sensor_msgs.msg import CompressedImage

    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png",
                           cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    msg = CompressedImage()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    msg.header.frame_id = "cam_optical"
    msg.format = fmt
    msg.data = buf.tobytes()
    return msg


def test_compressed_input_flood_and_flat_memory(ros_domain: int, tiny_weights: tuple[str, str],
                                                tmp_path: Path) -> None:
    from sensor_msgs.msg import CompressedImage, Image

    from cass_ros.msg import ClassTable, ObjectPresenceArray

    ns = unique_namespace("cass_proc")
    clip, dino = tiny_weights
    overrides = node_overrides(image_topics="cam/image_raw", prompts="person|pedestrian, car",
                               device="cpu")
    args = ros_args(overrides) + ros_args({
        "clip_weights": clip, "dino_weights": dino, "short_side": 64,
        "background_classes": ["sky"], "image_transport": "compressed",
        "publish_color": True}) + ["-r", f"__ns:={ns}"]
    log = tmp_path / "node.log"
    proc = start_node(args, log)
    h = Harness(ros_domain, ns)
    try:
        h.subscribe(Image, "cass/cam/segmentation")
        h.subscribe(Image, "cass/cam/segmentation/color")
        h.subscribe(ObjectPresenceArray, "cass/cam/objects")
        h.subscribe(ClassTable, "cass/classes", h.latched_qos())
        pub = h.node.create_publisher(CompressedImage, "cam/image_raw/compressed", 10)
        table = h.wait_message("cass/classes", timeout=90)
        assert list(table.class_names) == ["background", "person", "car"]
        h.wait_subscribers(pub)

        rng = np.random.default_rng(0)
        stamp = 5_000_000_000
        frames = [np.kron(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8),
                          np.ones((30, 40, 1), np.uint8)) for _ in range(4)]  # 120 x 160
        for fmt in ("jpeg", "png"):
            stamp += 1000
            pub.publish(_compressed(frames[0], stamp, fmt))
            for key in ("cass/cam/segmentation", "cass/cam/segmentation/color",
                        "cass/cam/objects"):
                m = h.wait_message(key, lambda m, s=stamp: stamp_ns(m.header) == s, 60)
                assert m.header.frame_id == "cam_optical"
                if hasattr(m, "height"):
                    assert (m.height, m.width) == (120, 160)

        # warm up, then a flood far faster than inference; memory stays flat
        def answered() -> int:
            return len(h.got("cass/cam/objects"))

        for _ in range(30):
            stamp += 1000
            pub.publish(_compressed(frames[stamp % 4], stamp))
            time.sleep(0.02)
        h.wait_for(lambda: answered() >= 5, 60, "answers to the warm-up frames")
        rss0 = rss_kib(proc.pid)
        sent = []
        for i in range(400):
            stamp += 1000
            sent.append(stamp)
            pub.publish(_compressed(frames[i % 4], stamp))
            if i % 50 == 0:
                time.sleep(0.05)
        h.wait_message("cass/cam/objects", lambda m: stamp_ns(m.header) == sent[-1], 60)
        rss1 = rss_kib(proc.pid)
        assert proc.poll() is None, "the node died"
        got = [stamp_ns(m.header) for m in h.got("cass/cam/objects")]
        flood_answers = [s for s in got if s in set(sent)]
        assert flood_answers == sorted(flood_answers)
        assert len(flood_answers) < len(sent) / 2  # dropped, not queued
        assert rss1 - rss0 < 40 * 1024, f"RSS grew {(rss1 - rss0) / 1024:.1f} MiB over the flood"
    finally:
        h.close()
        rc = stop_node(proc)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert "Traceback" not in text
    assert "dropped" in text or "prompt_id 1" in text


FAIL_CASES = [
    # (what, extra parameters, the parameter the message must name)
    ("missing weights", {"clip_weights": "/nonexistent/clip.pt", "prompts": ["car"]},
     "clip_weights"),
    ("bad device", {"device": "tpu", "prompts": ["car"]}, "device"),
    ("absent device", {"device": "cuda:3", "prompts": ["car"]}, "device"),
    ("unusable prompts", {"prompts": ["|"]}, "prompt"),
    ("unreadable classes file", {"classes_file": "/nonexistent/cls.txt"}, "classes_file"),
    ("wrong type", {"color_alpha": 1, "prompts": ["car"]}, "color_alpha"),
    ("out of range", {"short_side": 8, "prompts": ["car"]}, "short_side"),
    ("bad choice", {"output_size": "huge", "prompts": ["car"]}, "output_size"),
    ("camera names", {"camera_names": ["a", "b"], "prompts": ["car"]}, "camera_names"),
]


@pytest.mark.parametrize("what,params,name", FAIL_CASES, ids=[c[0] for c in FAIL_CASES])
def test_startup_failure_is_one_clear_line(ros_domain: int, tiny_weights: tuple[str, str],
                                           tmp_path: Path, what: str, params: dict[str, Any],
                                           name: str) -> None:
    clip, dino = tiny_weights
    base = {"clip_weights": clip, "dino_weights": dino, "device": "cpu", "short_side": 64}
    base.update(params)
    log = tmp_path / "node.log"
    proc = start_node(ros_args(base) + ["-r", f"__ns:={unique_namespace('cass_fail')}"], log)
    try:
        rc = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        stop_node(proc)
        pytest.fail(f"{what}: the node did not exit")
    stop_node(proc)
    text = log.read_text()
    assert rc != 0, text
    assert "Traceback" not in text, text
    fatal = [line for line in text.splitlines() if "FATAL" in line]
    assert len(fatal) == 1, text
    assert name in fatal[0], fatal[0]


def test_params_file_is_the_default_configuration() -> None:
    # the subprocess tests start from config/cass.yaml: it must exist where
    # the launch file looks for it too
    from ament_index_python.packages import get_package_share_directory

    installed = Path(get_package_share_directory("cass_ros")) / "config" / "cass.yaml"
    assert installed.read_text() == CONFIG.read_text()

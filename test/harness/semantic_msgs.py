"""A semantic_inference_msgs stand-in for the tests of semantic_inference's
open-set contract (docs/ros-interface.md, "semantic_inference (Hydra,
Khronos, Clio)"), built from the field lists of issue 23 in a temporary
colcon workspace with the suite's own colcon and rosidl generators (as the
Makefile builds cass_ros), once per test session; never part of the
installed package.

Its generated C libraries load only through LD_LIBRARY_PATH as the process
started with, so everything that uses the package runs as a subprocess with
``SemanticMsgs.env``: the node (cass_node) and this module's listener
(``python semantic_msgs.py listen ...``), which publishes the test frames,
records the node's outputs, calls its EncodeFeature service and writes what
it got to an .npz for the test to compare with the library.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE = "semantic_inference_msgs"
FILES = {
    "msg/FeatureVector.msg": "float32[] data\n",
    "msg/FeatureImage.msg": ("std_msgs/Header header\nint32[] mask_ids\nsensor_msgs/Image image\n"
                             "FeatureVector[] features\n"),
    "msg/FeatureVectorStamped.msg": "std_msgs/Header header\nFeatureVector feature\n",
    "srv/EncodeFeature.srv": "string prompt\n---\nFeatureVectorStamped feature\n",
    "CMakeLists.txt": """cmake_minimum_required(VERSION 3.16)
project(semantic_inference_msgs)
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
find_package(std_msgs REQUIRED)
find_package(sensor_msgs REQUIRED)
rosidl_generate_interfaces(${PROJECT_NAME}
  "msg/FeatureVector.msg" "msg/FeatureImage.msg" "msg/FeatureVectorStamped.msg"
  "srv/EncodeFeature.srv"
  DEPENDENCIES std_msgs sensor_msgs)
ament_export_dependencies(rosidl_default_runtime)
ament_package()
""",
    "package.xml": """<?xml version="1.0"?>
<package format="3">
  <name>semantic_inference_msgs</name>
  <version>0.0.0</version>
  <description>Test stand-in for MIT-SPARK's semantic_inference_msgs (cass_ros tests)</description>
  <maintainer email="tests@example.com">cass_ros tests</maintainer>
  <license>BSD-3-Clause</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
  <depend>std_msgs</depend>
  <depend>sensor_msgs</depend>
  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
""",
}
BUILD_TIMEOUT_S = 600


@dataclass(frozen=True)
class SemanticMsgs:
    """The built package: its install prefix and the environment (this
    process's, with the package's paths in front) its users run with."""

    prefix: Path
    env: dict[str, str]


def unavailable() -> str | None:
    """None when this interpreter's colcon and rosidl generators are there,
    else why the package cannot be built."""
    colcon = Path(sys.executable).parent / "colcon"
    if not colcon.exists():
        return f"no colcon next to {sys.executable} (the venv of requirements.lock has it)"
    try:
        from ament_index_python.packages import get_package_share_directory

        get_package_share_directory("rosidl_default_generators")
    except Exception as e:  # noqa: BLE001
        return f"the rosidl generators are not in the ament index ({e})"
    return None


def _prepend(env: dict[str, str], name: str, path: Path) -> None:
    env[name] = os.pathsep.join([str(path), *[p for p in [env.get(name, "")] if p]])


def build(root: Path) -> SemanticMsgs:
    """Write the package under ``root``/src and build it there (~30 s);
    AssertionError with the log's tail when the build fails."""
    src = root / "src" / PACKAGE
    for name, text in FILES.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    env = dict(os.environ)
    # the venv is the prefix of the ROS wheels (ament_cmake, rosidl, std_msgs ...)
    if sys.prefix not in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        _prepend(env, "AMENT_PREFIX_PATH", Path(sys.prefix))
    cmd = [str(Path(sys.executable).parent / "colcon"), "--log-base", str(root / "log"), "build",
           "--build-base", str(root / "build"), "--install-base", str(root / "install"),
           "--base-paths", str(root / "src"), "--event-handlers", "console_cohesion-",
           "--cmake-args", "-DBUILD_TESTING=OFF"]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT_S)
    if done.returncode != 0:
        raise AssertionError(f"building the {PACKAGE} fixture failed ({done.returncode}):\n"
                             f"{(done.stdout + done.stderr)[-4000:]}")
    prefix = root / "install" / PACKAGE
    use = dict(os.environ)
    _prepend(use, "AMENT_PREFIX_PATH", prefix)
    _prepend(use, "LD_LIBRARY_PATH", prefix / "lib")
    for site in sorted((prefix / "lib").glob("python*/site-packages")):
        _prepend(use, "PYTHONPATH", site)
    return SemanticMsgs(prefix, use)


_BUILT: dict[str, SemanticMsgs] = {}


def semantic_msgs_once(tmp_path_factory: Any) -> SemanticMsgs:
    """The session's package (built at the first call; pytest.skip when it
    cannot be built here)."""
    import pytest

    if "pkg" not in _BUILT:
        why = unavailable()
        if why is not None:
            pytest.skip(f"cannot build the {PACKAGE} test fixture: {why}")
        _BUILT["pkg"] = build(tmp_path_factory.mktemp("semantic_inference_msgs_ws"))
    return _BUILT["pkg"]


# ------------------------------------------------------------------ the listener


def run_listener(msgs: SemanticMsgs, ns: str, frames: Path, out: Path, prompts: list[str],
                 timeout: float = 240.0) -> dict[str, Any]:
    """Run the listener (below) in a subprocess with the package's
    environment; the arrays it recorded."""
    import numpy as np

    cmd = [sys.executable, str(Path(__file__).resolve()), "listen", ns, str(frames), str(out),
           json.dumps(prompts)]
    done = subprocess.run(cmd, env=msgs.env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"listener failed:\n{(done.stdout + done.stderr)[-4000:]}"
    with np.load(out, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _listen(ns: str, frames_path: str, out_path: str, prompts: list[str]) -> None:
    """Publish each frame of ``frames_path`` (rgb_i, stamp_i, and depth_i
    with its camera_info when given) to <ns>/front/..., record the frame's
    /instances, FeatureImage and FeatureVectorStamped, then call the
    EncodeFeature service with each prompt; write it all to ``out_path``."""
    import threading

    import numpy as np
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from semantic_inference_msgs.msg import FeatureImage, FeatureVectorStamped
    from semantic_inference_msgs.srv import EncodeFeature
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    rclpy.init()
    node = rclpy.create_node("si_listener", namespace=ns)
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    got: dict[str, list[Any]] = {"instances": [], "image": [], "feature": []}
    lock = threading.Lock()
    qos = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)

    def keep(key: str) -> Any:
        def store(msg: Any) -> None:
            with lock:
                got[key].append(msg)
        return store

    node.create_subscription(Image, "cass/front/instances", keep("instances"), qos)
    node.create_subscription(FeatureImage, "cass/front/semantic/image_raw", keep("image"), qos)
    node.create_subscription(FeatureVectorStamped, "cass/front/semantic/feature",
                             keep("feature"), qos)
    pub_rgb = node.create_publisher(Image, "front/image_raw", 10)
    pub_depth = node.create_publisher(Image, "front/depth/image_raw", 10)
    pub_info = node.create_publisher(CameraInfo, "front/depth/camera_info", 10)

    def wait(what: str, ok: Any, timeout: float = 60.0) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = ok()
            if value:
                return value
            time.sleep(0.05)
        raise SystemExit(f"timed out waiting for {what}")

    for pub in (pub_rgb, pub_depth, pub_info):
        wait(f"a subscriber of {pub.topic_name}", lambda p=pub: p.get_subscription_count() > 0)
    for topic in ("instances", "semantic/image_raw", "semantic/feature"):
        wait(f"the node's {topic}", lambda t=topic: node.count_publishers(f"{ns}/cass/front/{t}"))
    time.sleep(0.5)     # the subscriptions matched on both sides
    z = np.load(frames_path)
    result: dict[str, Any] = {}
    for i in range(int(z["count"])):
        stamp = int(z[f"stamp_{i}"])
        header = Header(frame_id="front_optical")
        header.stamp.sec, header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        if f"depth_{i}" in z.files:
            mm = z[f"depth_{i}"]
            h, w = mm.shape
            pub_info.publish(CameraInfo(header=header, height=h, width=w,
                                        k=[float(v) for v in z[f"k_{i}"]]))
            depth = Image(header=header, height=h, width=w, encoding="16UC1", is_bigendian=0,
                          step=w * 2)
            depth.data = mm.astype("<u2").tobytes()
            pub_depth.publish(depth)
            time.sleep(0.5)     # the node holds the depth before the frame comes
        rgb = z[f"rgb_{i}"]
        h, w = rgb.shape[:2]
        msg = Image(header=header, height=h, width=w, encoding="rgb8", is_bigendian=0,
                    step=w * 3)
        msg.data = np.ascontiguousarray(rgb, np.uint8).tobytes()
        pub_rgb.publish(msg)

        def of_stamp(key: str, s: int = stamp) -> Any:
            with lock:
                return next((m for m in got[key] if m.header.stamp.sec * 1_000_000_000
                             + m.header.stamp.nanosec == s), None)

        inst = wait("/instances", lambda: of_stamp("instances"), 120)
        image = wait("the FeatureImage", lambda: of_stamp("image"))
        feature = wait("the FeatureVectorStamped", lambda: of_stamp("feature"))
        result[f"instances_{i}"] = np.frombuffer(bytes(inst.data), "<i4").reshape(
            inst.height, inst.width)
        img = image.image
        result[f"fi_meta_{i}"] = np.array([img.height, img.width, img.step, img.is_bigendian])
        result[f"fi_encoding_{i}"] = np.array(img.encoding)
        result[f"fi_frame_{i}"] = np.array(image.header.frame_id)
        result[f"fi_data_{i}"] = np.frombuffer(bytes(img.data), np.uint8)
        result[f"fi_ids_{i}"] = np.array(image.mask_ids, np.int64)
        result[f"fi_features_{i}"] = np.array([np.array(f.data, np.float32)
                                               for f in image.features], np.float32)
        result[f"vec_{i}"] = np.array(feature.feature.data, np.float32)
        result[f"vec_frame_{i}"] = np.array(feature.header.frame_id)
    client = node.create_client(EncodeFeature, "cass/semantic/embed")
    wait("the EncodeFeature service", lambda: client.wait_for_service(timeout_sec=0.1))
    for j, prompt in enumerate(prompts):
        future = client.call_async(EncodeFeature.Request(prompt=prompt))
        wait(f"the embedding of {prompt!r}", future.done)
        response = future.result()
        result[f"embed_{j}"] = np.array(response.feature.feature.data, np.float32)
        result[f"embed_stamp_{j}"] = np.array(response.feature.header.stamp.sec)
    np.savez(out_path, **result)
    executor.shutdown(timeout_sec=2.0)
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[1] != "listen":
        raise SystemExit("usage: semantic_msgs.py listen NAMESPACE FRAMES.npz OUT.npz PROMPTS_JSON")
    _listen(sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5]))

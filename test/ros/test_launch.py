"""launch/cass.launch.py.

With launch_pytest (ROS 2 installs) the launch file is started for real and
its outputs checked. Here launch, launch_ros and launch_pytest have no
wheels: those tests skip, and test_node_process.py starts the installed
cass_node with the parameters the launch file would set
(cass_ros.ros.wiring.launch_args), the same start-up path.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from cass_ros.ros.wiring.launch_args import LAUNCH_ARGUMENTS

LAUNCH_FILE = Path(__file__).resolve().parents[2] / "launch" / "cass.launch.py"
REQUIRED = {"params_file", "image_topics", "prompts", "device", "namespace", "use_sim_time"}


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# PyPI's `launch` is an unrelated program: require the ROS one (launch.actions).
HAVE_LAUNCH = _have("launch_pytest") and _have("launch_ros") and _have("launch.actions")
SKIP_REASON = ("launch, launch_ros and launch_pytest are not installed (no PyPI wheels); "
               "test/ros/test_node_process.py covers the same start-up path")


def test_launch_file_structure() -> None:
    tree = ast.parse(LAUNCH_FILE.read_text())
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                for a in n.names}
    for item in (("launch", "LaunchDescription"), ("launch.actions", "DeclareLaunchArgument"),
                 ("launch.actions", "OpaqueFunction"), ("launch_ros.actions", "Node"),
                 ("launch.substitutions", "LaunchConfiguration"),
                 ("cass_ros.ros.wiring.launch_args", "node_overrides")):
        assert item in imported, item
    assert set(LAUNCH_ARGUMENTS) >= REQUIRED
    text = LAUNCH_FILE.read_text()
    assert 'executable="cass_node"' in text and 'package="cass_ros"' in text


if HAVE_LAUNCH:
    import launch
    import launch_pytest
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    @launch_pytest.fixture
    def launch_description(tmp_path_factory):
        from cass_ros.core.models import save_tiny_random_checkpoints

        clip, dino = save_tiny_random_checkpoints(tmp_path_factory.mktemp("w"))
        params = tmp_path_factory.mktemp("p") / "params.yaml"
        params.write_text(
            "/**:\n  ros__parameters:\n"
            f"    clip_weights: {clip}\n    dino_weights: {dino}\n    short_side: 64\n"
            "    background_classes: [sky]\n")
        include = IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
            launch_arguments={"params_file": str(params), "image_topics": "/lt/cam/image_raw",
                              "prompts": "person|pedestrian, car", "device": "cpu",
                              "namespace": "lt"}.items())
        return launch.LaunchDescription([include, launch_pytest.actions.ReadyToTest()])

    @pytest.mark.launch(fixture=launch_description)
    def test_launched_node_answers(launch_context):
        import time

        import numpy as np
        import rclpy
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header

        from cass_ros.msg import ClassTable, ObjectPresenceArray
        from cass_ros.ros.outputs.messages import image_from_rgb

        rclpy.init()
        node = rclpy.create_node("launch_test")
        try:
            tables, objects = [], []
            node.create_subscription(ClassTable, "/lt/cass/classes", tables.append, QoSProfile(
                depth=1, reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.TRANSIENT_LOCAL))
            node.create_subscription(ObjectPresenceArray, "/lt/cass/cam/objects",
                                     objects.append, 10)
            pub = node.create_publisher(Image, "/lt/cam/image_raw", 10)
            end = time.monotonic() + 120
            while time.monotonic() < end and not objects:
                header = Header(frame_id="cam")
                pub.publish(image_from_rgb(np.zeros((48, 64, 3), np.uint8), "rgb8", header))
                rclpy.spin_once(node, timeout_sec=0.5)
            assert tables and list(tables[-1].class_names) == ["background", "person", "car"]
            assert objects and objects[-1].header.frame_id == "cam"
        finally:
            node.destroy_node()
            rclpy.shutdown()

    @launch_pytest.fixture
    def bag_launch_description(ros_domain, bag_params_file):
        """cass.launch.py with the bag tests' parameters file (tiny weights,
        the sample scene's prompts), in the test session's DDS domain."""
        include = IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
            launch_arguments={"params_file": str(bag_params_file),
                              "image_topics": "/camera/image_raw"}.items())
        return launch.LaunchDescription([include, launch_pytest.actions.ReadyToTest()])

    @pytest.mark.launch(fixture=bag_launch_description)
    def test_sample_bag_through_the_launch_file(ros_domain, sample_bag):
        """The bag scenario of test_bag_live.py, with the node started by
        the launch file: every frame yields outputs, the prompt message in
        the bag switches the classes."""
        import bag_player
        from cass_ros.bag import io as bag_io

        topics = ["/camera/image_raw", "/cass/prompts"]
        with bag_player.BagPlayer(ros_domain) as player:
            player.record(player.node_output_topics(["camera"]))
            player.advertise(sample_bag.path, topics)
            player.wait_ready(None, topics, timeout=180.0)
            rec = player.play(sample_bag.path, topics, lockstep=True, frame_timeout=60.0)
            player.settle(quiet_s=2.0, timeout=120.0)
        objects = rec.messages("/cass/camera/objects")
        assert [bag_io.stamp_ns(m.header.stamp) for m in objects] == sample_bag.stamps_ns
        k = sample_bag.first_frame_after_prompt
        assert [o.prompt_id for o in objects] == [1] * k + [2] * (sample_bag.frames - k)
else:
    @pytest.mark.skip(reason=SKIP_REASON)
    def test_launched_node_answers() -> None:
        """Runs where launch_pytest exists."""

    @pytest.mark.skip(reason=SKIP_REASON.replace("test_node_process.py", "test_bag_live.py"))
    def test_sample_bag_through_the_launch_file() -> None:
        """Runs where launch_pytest exists."""

"""Start cass_node: ros2 launch cass_ros cass.launch.py [arg:=value ...]

Arguments: params_file, image_topics (comma-separated) / image_topic,
prompts ('person|pedestrian, forklift'), device, namespace, use_sim_time.
Empty arguments leave the parameter file's values.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from cass_ros.ros.launch_args import LAUNCH_ARGUMENTS, node_overrides


def _cass_node(context, *args, **kwargs):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    overrides = node_overrides(
        image_topics=arg("image_topics"), image_topic=arg("image_topic"),
        prompts=arg("prompts"), device=arg("device"), use_sim_time=arg("use_sim_time"))
    return [Node(
        package="cass_ros",
        executable="cass_node",
        name="cass_node",
        namespace=arg("namespace"),
        output="screen",
        emulate_tty=True,
        # later entries win: the file first, then the launch arguments
        parameters=[arg("params_file"), overrides],
    )]


def generate_launch_description():
    share = get_package_share_directory("cass_ros")
    defaults = {
        "params_file": os.path.join(share, "config", "cass.yaml"),
        "image_topics": "",
        "image_topic": "",
        "prompts": "",
        "device": "",
        "namespace": "",
        "use_sim_time": "false",
    }
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=defaults[name], description=text)
         for name, text in LAUNCH_ARGUMENTS.items()]
        + [OpaqueFunction(function=_cass_node)]
    )

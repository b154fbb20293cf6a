"""Start cass_node: ros2 launch cass_ros cass.launch.py [arg:=value ...]

Arguments: params_file, image_topics (comma-separated) / image_topic,
prompts ('person|pedestrian, forklift'), device, namespace, use_sim_time,
managed, autostart, depth_topics (comma-separated, one per image topic).
Empty arguments leave the parameter file's values.

managed:=true starts the managed node (cass_lifecycle_node, a launch_ros
LifecycleNode) instead, unconfigured; with autostart:=true the launch
configures it and, once it is inactive after that configure, activates it
(launch_ros lifecycle events; docs/ros-interface.md, "Managed node").
"""

import os

import lifecycle_msgs.msg
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState

from cass_ros.ros.wiring.launch_args import LAUNCH_ARGUMENTS, launch_flag, node_overrides


def _cass_node(context, *args, **kwargs):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    overrides = node_overrides(
        image_topics=arg("image_topics"), image_topic=arg("image_topic"),
        prompts=arg("prompts"), device=arg("device"), use_sim_time=arg("use_sim_time"),
        depth_topics=arg("depth_topics"))
    common = dict(
        package="cass_ros",
        name="cass_node",
        namespace=arg("namespace"),
        output="screen",
        emulate_tty=True,
        # later entries win: the file first, then the launch arguments
        parameters=[arg("params_file"), overrides],
    )
    autostart = launch_flag("autostart", arg("autostart"))
    if not launch_flag("managed", arg("managed")):
        return [Node(executable="cass_node", **common)]
    node = LifecycleNode(executable="cass_lifecycle_node", **common)
    return [node] + (_autostart(node) if autostart else [])


def _autostart(node):
    """configure now (the event waits for the node's change_state service),
    activate after that configure reached inactive (once: a later
    deactivate also ends in inactive and must stay there)."""
    def change(transition_id):
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                           transition_id=transition_id))

    transition = lifecycle_msgs.msg.Transition
    return [
        RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
            entities=[change(transition.TRANSITION_ACTIVATE)], handle_once=True)),
        change(transition.TRANSITION_CONFIGURE),
    ]


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
        "managed": "false",
        "autostart": "false",
        "depth_topics": "",
    }
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=defaults[name], description=text)
         for name, text in LAUNCH_ARGUMENTS.items()]
        + [OpaqueFunction(function=_cass_node)]
    )

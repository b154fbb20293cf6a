"""The ROS 2 adapter around cass_ros.core: the node, its parameters, its
messages, image conversion and launch arguments (docs/ros-interface.md)."""

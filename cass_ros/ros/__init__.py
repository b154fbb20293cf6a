"""The ROS 2 adapter around cass_ros.core (docs/ros-interface.md), by
concern: ``inputs`` (camera and depth messages in), ``workers`` (the frame
and prompt threads), ``outputs`` (the messages and publishers consumers
read), ``services`` (/cass/query, /cass/describe) and ``wiring`` (the
nodes, their parameters, launch arguments and lifecycle). Lower subpackages
never import ``wiring``."""

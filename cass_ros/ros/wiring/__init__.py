"""The node's wiring (docs/ros-interface.md): the nodes, their entry points,
lifecycle and stopping, the one place that reads ROS parameters, the launch
arguments, and model loading. Wiring only: what the node computes lives in
cass_ros.core, what it says in ros.outputs."""

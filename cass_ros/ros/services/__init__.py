"""The node's services (docs/ros-interface.md, "Queries"): questions asked
of the newest segmented frame without a new forward pass."""

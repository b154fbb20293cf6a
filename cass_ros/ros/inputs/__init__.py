"""What the node takes in (docs/ros-interface.md, Topics, "Depth to 3D"):
camera messages to RGB arrays, the per-camera latest-frame slots and
counters, and depth images matched to frames."""

"""What the node publishes for its consumers (docs/ros-interface.md, Topics,
"Standard messages", "Outputs for mappers", "Instances and tracks", "Depth
to 3D", "Diagnostics and log"): message builders and publishers. The
builders are shared with cass_bag, so a recording relabelled offline holds
the live node's messages."""

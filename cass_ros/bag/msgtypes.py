"""The message type names cass_bag reads and writes, and the one spelling
of them it uses (docs/ros-interface.md, cass_bag): ``pkg/msg/Type``.

Below both ``bag.io`` and ``bag.inputs``, so that neither imports the other
for a name."""

from __future__ import annotations

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
STRING = "std_msgs/msg/String"
OBJECTS = "cass_ros/msg/ObjectPresenceArray"
OBJECT = "cass_ros/msg/ObjectPresence"
CLASS_TABLE = "cass_ros/msg/ClassTable"
INSTANCES = "cass_ros/msg/InstanceArray"
INSTANCE = "cass_ros/msg/Instance"
FEATURES = "cass_ros/msg/Features"
# semantic_inference's open-set contract (MIT-SPARK's package, when installed)
FEATURE_IMAGE = "semantic_inference_msgs/msg/FeatureImage"
FEATURE_VECTOR = "semantic_inference_msgs/msg/FeatureVector"
FEATURE_VECTOR_STAMPED = "semantic_inference_msgs/msg/FeatureVectorStamped"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)


def normalize_msgtype(msgtype: str) -> str:
    """``pkg/msg/Type`` for ``pkg/Type``, the name older rosbag2 releases,
    some MCAP writers and ROS 1 give a message type (docs/ros-interface.md,
    cass_bag); any other name unchanged."""
    parts = msgtype.split("/")
    return f"{parts[0]}/msg/{parts[1]}" if len(parts) == 2 and all(parts) else msgtype

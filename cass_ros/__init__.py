"""cass_ros: CASS open-vocabulary semantic segmentation for ROS 2.

The segmenter (``cass_ros.segmenter``, ``cass_ros.config`` ...) is plain
PyTorch and imports no ROS module; the node and the bag tool adapt it.
This file stays import-light: ROS code imports ``cass_ros.msg`` through it.
"""

__version__ = "0.1.0"

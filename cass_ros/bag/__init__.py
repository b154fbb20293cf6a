"""Offline rosbag2 tools on top of cass_ros.core and cass_ros.ros: reading and
writing bags with rosbags (no ROS install needed) and the cass_bag pipeline."""

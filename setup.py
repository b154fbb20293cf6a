"""pip install of the cass_ros Python package (metadata in setup.cfg).

A ROS 2 workspace builds the package with colcon through CMakeLists.txt
(messages included); this file serves `pip install .` of the Python code
and its console entry points (cass_node, cass_bag, cass_segment). The node
additionally needs the generated messages (cass_ros.msg) of a colcon build.
"""

from setuptools import setup

setup()

"""What the node says once per prompt set (docs/ros-interface.md, "Output,
once per prompt set", "Standard messages", "Outputs for mappers"): the
latched /cass/classes, each camera's latched label_info under the class
table's header (their stamps tie the two), and the ``color_table_file``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rclpy.node import Node
from std_msgs.msg import Header

from cass_ros.msg import ClassTable

from ...core.prompt_session import ActivePrompts
from ...core.visualize import write_color_table
from .messages import class_table_msg
from .vision import label_info_msg


class Announcer:
    """The class table publisher and the header of the table in force."""

    def __init__(self, node: Node, qos: Any) -> None:
        self._node = node
        self._pub = node.create_publisher(ClassTable, "cass/classes", qos)
        self._header: Header | None = None      # of the class table in force

    def class_table(self, active: ActivePrompts, label_info: Callable[[], None]) -> None:
        """/cass/classes for ``active``, then the label_info under its header."""
        header = Header()
        header.stamp = self._node.get_clock().now().to_msg()
        self._pub.publish(class_table_msg(active.prompt_set, active.prompt_id, header))
        self._header = header
        label_info()

    def label_info(self, active: ActivePrompts | None, publishers: Sequence[Any],
                   prob_threshold: float) -> None:
        """/cass/<cam>/label_info: the class map in force with the
        prob_threshold in force, under the class table's header."""
        if active is None or self._header is None or not publishers:
            return
        msg = label_info_msg(active.prompt_set, self._header, prob_threshold)
        for pub in publishers:
            pub.publish(msg)

    def color_table(self, path: str, active: ActivePrompts | None) -> None:
        """``color_table_file``: the class colours as CSV (atomic); a file that
        cannot be written is a warning, never fatal."""
        if not path or active is None:
            return
        try:
            write_color_table(path, active.class_names, active.colors)
        except OSError as e:
            self._node.get_logger().warning(f"color_table_file: cannot write {path!r}: {e}")


__all__ = ["Announcer"]

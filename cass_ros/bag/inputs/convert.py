"""The ROS 2 messages the foreign inputs hand on (cass_ros.bag.inputs):
sensor_msgs/msg/Image, CompressedImage and std_msgs/msg/String in CDR,
built with rosbags' Kilted typestore, the one bag.io reads them with."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
from rosbags.interfaces import (Connection, ConnectionExtRosbag2, MessageDefinition,
                                MessageDefinitionFormat)
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.store import Typestore

from ..msgtypes import COMPRESSED_IMAGE, IMAGE, STRING


@cache
def ros2_types() -> Typestore:
    """The standard ROS 2 messages (bag.io.make_typestore's base; the
    cass_ros messages are not needed to build camera images)."""
    return get_typestore(Stores.ROS2_KILTED)


def connection(conn_id: int, topic: str, msgtype: str, count: int) -> Connection:
    """A connection as rosbags' storage readers give one, without an
    embedded definition: the typestore's serves (bag.tool copies it so)."""
    return Connection(id=conn_id, topic=topic, msgtype=msgtype,
                      msgdef=MessageDefinition(MessageDefinitionFormat.NONE, ""), digest="",
                      msgcount=count, ext=ConnectionExtRosbag2("cdr", []), owner=None)


def header(stamp_ns: int, frame_id: str) -> Any:
    t = ros2_types().types
    stamp = t["builtin_interfaces/msg/Time"](sec=int(stamp_ns // 1_000_000_000),
                                             nanosec=int(stamp_ns % 1_000_000_000))
    return t["std_msgs/msg/Header"](stamp=stamp, frame_id=str(frame_id))


def image_cdr(head: Any, *, height: int, width: int, encoding: str, step: int,
              data: bytes | np.ndarray, is_bigendian: int = 0) -> bytes:
    msg = ros2_types().types[IMAGE](
        header=head, height=int(height), width=int(width), encoding=str(encoding),
        is_bigendian=int(is_bigendian), step=int(step), data=_bytes(data))
    return bytes(ros2_types().serialize_cdr(msg, IMAGE))


def compressed_cdr(head: Any, *, fmt: str, data: bytes | np.ndarray) -> bytes:
    msg = ros2_types().types[COMPRESSED_IMAGE](header=head, format=str(fmt), data=_bytes(data))
    return bytes(ros2_types().serialize_cdr(msg, COMPRESSED_IMAGE))


def string_cdr(text: str) -> bytes:
    return bytes(ros2_types().serialize_cdr(ros2_types().types[STRING](data=str(text)), STRING))


def _bytes(data: bytes | np.ndarray) -> np.ndarray:
    return np.frombuffer(bytes(data), np.uint8) if not isinstance(data, np.ndarray) \
        else data.reshape(-1).view(np.uint8)

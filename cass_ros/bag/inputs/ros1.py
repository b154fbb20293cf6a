"""ROS 1 ``.bag`` input (docs/ros-interface.md, cass_bag, "Input kinds"),
read with rosbags' rosbag1 reader and its Noetic typestore. The camera
topics (sensor_msgs/Image, CompressedImage) and the prompts topic
(std_msgs/String) are converted to their ROS 2 messages: the same fields
but for the header's ``seq``, which ROS 2 dropped. Other topics are left out."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rosbags.interfaces import Connection
from rosbags.rosbag1 import Reader
from rosbags.rosbag1 import ReaderError as Ros1ReaderError
from rosbags.rosbag2 import ReaderError
from rosbags.typesys import Stores, get_typestore

from ..msgtypes import COMPRESSED_IMAGE, IMAGE, STRING, normalize_msgtype
from .convert import compressed_cdr, connection, header, image_cdr, string_cdr
from .storage import StorageMeta, one_line


def _image(msg: Any) -> bytes:
    return image_cdr(_header(msg), height=msg.height, width=msg.width,
                             encoding=msg.encoding, step=msg.step, data=msg.data,
                             is_bigendian=msg.is_bigendian)


def _compressed(msg: Any) -> bytes:
    return compressed_cdr(_header(msg), fmt=msg.format, data=msg.data)


def _header(msg: Any) -> Any:
    stamp = msg.header.stamp
    return header(int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec), msg.header.frame_id)


# The types converted, and how.
CONVERTERS: dict[str, Callable[[Any], bytes]] = {
    IMAGE: _image, COMPRESSED_IMAGE: _compressed,
    STRING: lambda msg: string_cdr(msg.data)}


class Ros1Storage:
    """One ROS 1 bag file as a storage (cass_ros.bag.inputs)."""

    def __init__(self, path: Path) -> None:
        self._reader = Reader(path)
        try:
            self._reader.open()
        except (Ros1ReaderError, OSError, ValueError, KeyError) as e:
            raise ReaderError(f"not a readable ROS 1 bag: {one_line(e)}") from None
        self._types = get_typestore(Stores.ROS1_NOETIC)
        self._source = {c.id: c for c in self._reader.connections
                        if normalize_msgtype(c.msgtype) in CONVERTERS}
        self.connections = [connection(c.id, c.topic, normalize_msgtype(c.msgtype), c.msgcount)
                            for c in self._source.values()]
        count = sum(c.msgcount for c in self.connections)
        self.metadata = StorageMeta(self._reader.start_time if count else 0, count)

    def messages(self, connections: Sequence[Connection]) -> Iterator[tuple[Connection, int, bytes]]:
        """(connection, bag time, ROS 2 CDR) of ``connections`` in time order."""
        mine = {c.id: c for c in connections}
        source = [self._source[i] for i in mine]
        if not source:
            return
        try:
            for conn, t_ns, raw in self._reader.messages(source):
                target = mine[conn.id]
                msg = self._types.deserialize_ros1(raw, conn.msgtype)
                yield target, t_ns, CONVERTERS[target.msgtype](msg)
        except (Ros1ReaderError, ValueError, KeyError, IndexError, struct.error) as e:
            raise ReaderError(f"a message cannot be read: {one_line(e)}") from None

    def close(self) -> None:
        self._reader.close()


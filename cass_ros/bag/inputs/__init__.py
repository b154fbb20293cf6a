"""Recordings that are not rosbag2 (docs/ros-interface.md, cass_bag, "Input
kinds"): a ROS 1 ``.bag`` file and an MCAP file of another profile than
ros2 (Foxglove's). Each is opened as a *storage* like rosbags' own readers,
whose messages are already sensor_msgs / std_msgs ROS 2 messages in CDR,
so that ``bag.io.open_input_bag`` merges it as one more storage file and
nothing downstream knows where the frames came from.

A storage has ``connections`` (ids its own, types ``pkg/msg/Type``),
``metadata`` (``start_time``, ``message_count``), ``messages(connections)``
yielding (connection, bag time, CDR bytes), and ``close()``. It raises
rosbags' ``ReaderError`` with one line for what it cannot read, which
``bag.io`` turns into a ``BagError``.
"""

from __future__ import annotations

import struct
from pathlib import Path

from .storage import Storage

ROS1_SUFFIX = ".bag"
_MCAP_MAGIC = b"\x89MCAP0\r\n"
_MCAP_HEADER = 0x01


def mcap_profile(path: Path) -> str | None:
    """The profile of an MCAP file's header record ("ros2", "" ...); None
    when the file does not start like an MCAP file (rosbags then says why)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8 + 9 + 4)
            if len(head) < 21 or head[:8] != _MCAP_MAGIC or head[8] != _MCAP_HEADER:
                return None
            (size,) = struct.unpack("<I", head[17:21])
            profile = f.read(size)
    except OSError:
        return None
    if len(profile) < size:
        return None
    return profile.decode("utf-8", "replace")


def is_foreign(path: Path) -> bool:
    """A ROS 1 bag file, or an MCAP file whose profile is not ros2."""
    if not path.is_file():
        return False
    if path.suffix == ROS1_SUFFIX:
        return True
    profile = mcap_profile(path) if path.suffix == ".mcap" else None
    return profile is not None and profile != "ros2"


def open_foreign(path: Path) -> Storage:
    """The storage of a file ``is_foreign`` accepts. The readers are
    imported here: the mcap and protobuf packages load only when such a
    file is read, not with every cass_bag run."""
    if path.suffix == ROS1_SUFFIX:
        from .ros1 import Ros1Storage

        return Ros1Storage(path)
    from .foxglove import FoxgloveStorage

    return FoxgloveStorage(path)

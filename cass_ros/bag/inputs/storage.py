"""What a storage of another tool's recording is to ``bag.io`` (the
package's docstring): its metadata, the protocol ``bag.io`` reads it by,
and the one-line error rule (docs/ros-interface.md, cass_bag)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from rosbags.interfaces import Connection


@dataclass
class StorageMeta:
    """What ``bag.io`` reads of a storage's metadata."""

    start_time: int
    message_count: int


class Storage(Protocol):
    """A recording opened as ROS 2 messages in CDR."""

    connections: list[Connection]
    metadata: StorageMeta

    def messages(self, connections: Sequence[Connection]
                 ) -> Iterator[tuple[Connection, int, bytes]]: ...

    def close(self) -> None: ...


def one_line(error: BaseException) -> str:
    """The first line of an error (a YAML error adds the offending lines),
    or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

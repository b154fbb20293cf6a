"""Foxglove MCAP input (docs/ros-interface.md, cass_bag, "Input kinds"): an
MCAP file of another profile than ros2 whose channels carry
``foxglove.RawImage`` or ``foxglove.CompressedImage``, protobuf-encoded
(the schema embedded as a FileDescriptorSet) or JSON-encoded (a JSON
schema; RawImage's ``data`` in base64). Read with the ``mcap`` package,
protobuf decoded by ``mcap-protobuf-support``, JSON by the standard
library; each image becomes the ROS 2 sensor_msgs message with the same
fields, its header stamp the Foxglove ``timestamp``, its bag time the
MCAP log time. Channels of ROS 2 messages in CDR (a writer that left
the profile empty) pass as they are when they are sensor_msgs Image or
CompressedImage, or std_msgs String. Other channels are left out."""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap.records import Channel, Schema
from mcap_protobuf.decoder import DecoderFactory
from rosbags.interfaces import Connection
from rosbags.rosbag2 import ReaderError

from ..msgtypes import COMPRESSED_IMAGE, IMAGE, STRING, normalize_msgtype
from .convert import compressed_cdr, connection, header, image_cdr
from .storage import StorageMeta, one_line

RAW_IMAGE_SCHEMA = "foxglove.RawImage"
COMPRESSED_IMAGE_SCHEMA = "foxglove.CompressedImage"
TARGET = {RAW_IMAGE_SCHEMA: IMAGE, COMPRESSED_IMAGE_SCHEMA: COMPRESSED_IMAGE}
CDR_TYPES = (IMAGE, COMPRESSED_IMAGE, STRING)    # ROS 2 channels passed as they are
# What a corrupt file or message raises in the mcap package (and here, for
# a message that protobuf or json cannot decode: ValueError).
_READ_ERRORS = (McapError, OSError, ValueError, KeyError, struct.error, EOFError)


class FoxgloveStorage:
    """One Foxglove MCAP file as a storage (cass_ros.bag.inputs)."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - kept open until close()
        self._to_cdr: dict[int, Callable[[bytes], bytes]] = {}
        self.connections: list[Connection] = []
        try:
            self._reader = make_reader(self._file)
            channels, schemas, counts, start = self._contents()
            for ch in channels.values():
                found = _converter(ch, schemas.get(ch.schema_id))
                if found is not None:
                    msgtype, self._to_cdr[ch.id] = found
                    self.connections.append(connection(ch.id, ch.topic, msgtype,
                                                       counts.get(ch.id, 0)))
        except _READ_ERRORS as e:
            self._file.close()
            raise ReaderError(f"not a readable MCAP file: {one_line(e)}") from None
        self.metadata = StorageMeta(start, sum(c.msgcount for c in self.connections))

    def _contents(self) -> tuple[dict[int, Channel], dict[int, Schema], dict[int, int], int]:
        """Channels, schemas, messages per channel, first log time: from the
        summary section, or by reading the file through when it has none."""
        summary = self._reader.get_summary()
        if summary is not None and summary.statistics is not None:
            stats = summary.statistics
            return (summary.channels, summary.schemas, dict(stats.channel_message_counts),
                    stats.message_start_time)
        channels: dict[int, Channel] = {}
        schemas: dict[int, Schema] = {}
        counts: dict[int, int] = {}
        start = 2**63 - 1
        for schema, channel, message in self._reader.iter_messages(log_time_order=False):
            channels[channel.id] = channel
            if schema is not None:
                schemas[schema.id] = schema
            counts[channel.id] = counts.get(channel.id, 0) + 1
            start = min(start, message.log_time)
        self._file.seek(0)
        self._reader = make_reader(self._file)
        return channels, schemas, counts, start if counts else 0

    def messages(self, connections: Sequence[Connection]) -> Iterator[tuple[Connection, int, bytes]]:
        """(connection, log time, ROS 2 CDR) of ``connections``, in log time order."""
        mine = {c.id: c for c in connections}
        if not mine:
            return
        topics = sorted({c.topic for c in mine.values()})
        try:
            for _schema, channel, message in self._reader.iter_messages(topics=topics):
                target = mine.get(channel.id)
                if target is not None:
                    yield target, message.log_time, self._to_cdr[channel.id](message.data)
        except _READ_ERRORS as e:
            raise ReaderError(f"a message cannot be read: {one_line(e)}") from None

    def close(self) -> None:
        self._file.close()


def _converter(channel: Channel, schema: Schema | None
               ) -> tuple[str, Callable[[bytes], bytes]] | None:
    """(ROS 2 type, message data -> its CDR) of a channel; None for one
    that carries neither a Foxglove image (protobuf, JSON) nor a ROS 2
    message cass_bag reads."""
    if schema is None:
        return None
    msgtype = normalize_msgtype(schema.name)
    if channel.message_encoding == "cdr" and msgtype in CDR_TYPES:
        return msgtype, bytes
    if schema.name not in TARGET:
        return None
    msgtype = TARGET[schema.name]
    if channel.message_encoding == "json":
        return msgtype, lambda data: _to_ros(msgtype, _from_json(data))
    try:
        proto = DecoderFactory().decoder_for(channel.message_encoding, schema)
    except Exception as e:  # noqa: BLE001 - protobuf's errors (DecodeError, TypeError) share no base
        raise ValueError(f"the protobuf schema {schema.name} cannot be read: {one_line(e)}") \
            from None
    if proto is None:
        return None
    return msgtype, lambda data: _to_ros(msgtype, _from_protobuf(proto, data))


def _from_protobuf(decode: Callable[[bytes], Any], data: bytes) -> dict[str, Any]:
    try:
        msg = decode(data)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError has no stable base
        raise ValueError(f"a protobuf message cannot be decoded: {one_line(e)}") from None
    stamp = msg.timestamp.seconds * 1_000_000_000 + msg.timestamp.nanos
    fields = {name: getattr(msg, name) for name in
              ("frame_id", "width", "height", "encoding", "step", "data", "format")
              if hasattr(msg, name)}
    return dict(fields, stamp_ns=stamp)


def _from_json(data: bytes) -> dict[str, Any]:
    """Foxglove's JSON: a timestamp {sec, nsec}, binary fields in base64."""
    try:
        obj = json.loads(data)
        stamp = obj.get("timestamp") or {}
        fields = dict(obj, stamp_ns=int(stamp.get("sec", 0)) * 1_000_000_000
                      + int(stamp.get("nsec", 0)),
                      data=base64.b64decode(obj.get("data", ""), validate=True))
    except (AttributeError, TypeError, binascii.Error, UnicodeDecodeError) as e:
        raise ValueError(f"a JSON message is not a Foxglove image: {one_line(e)}") from None
    return fields


def _to_ros(msgtype: str, f: dict[str, Any]) -> bytes:
    head = header(f["stamp_ns"], f.get("frame_id", ""))
    if msgtype == COMPRESSED_IMAGE:
        return compressed_cdr(head, fmt=f.get("format", ""), data=f["data"])
    return image_cdr(head, height=f.get("height", 0), width=f.get("width", 0),
                             encoding=f.get("encoding", ""), step=f.get("step", 0),
                             data=f["data"])


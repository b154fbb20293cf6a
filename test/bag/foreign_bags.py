"""Recordings as other tools write them, for test_bag_foreign.py: the same
frames (and prompt message) as a rosbag2 of today's form, written with the
libraries those tools use: rosbags' rosbag2 writer with type names without
``/msg/``, a bare ``.db3``, Foxglove MCAP (mcap-protobuf-support with
foxglove-schemas-protobuf; the mcap writer with JSON), rosbags' rosbag1
writer; and rosbag2 metadata versions 4 to 8, split and compressed bags."""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from rosbags.rosbag1 import Writer as Ros1Writer
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from cass_ros.bag import io as bag_io

RAW = "/front/image_raw"
COMPRESSED = "/rear/image_raw/compressed"
T0 = 1_700_000_000_000_000_000       # bag time of the first frame
STAMP_LAG = 5_000_000                # header stamps 5 ms before the bag times
PROMPT = "car, sun"


@dataclass
class Frame:
    topic: str
    t_ns: int                        # bag (log) time
    stamp_ns: int                    # header (Foxglove message) timestamp
    frame_id: str
    bgr: np.ndarray
    png: bytes


@dataclass
class Recording:
    frames: list[Frame]
    prompt_ns: int | None            # a /cass/prompts message (PROMPT) at this time

    def events(self) -> list[tuple[int, str, Any]]:
        """(time, "frame" | "prompt", what) in time order."""
        out: list[tuple[int, str, Any]] = [(f.t_ns, "frame", f) for f in self.frames]
        if self.prompt_ns is not None:
            out.append((self.prompt_ns, "prompt", PROMPT))
        return sorted(out, key=lambda e: e[0])


def recording(render: Any, frames: int = 3, prompt: bool = True) -> Recording:
    """``frames`` frames of the sample scene on each topic, 160 x 120, raw
    (bgr8) and PNG; with ``prompt``, PROMPT before the last frames."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(frames):
        bgr = cv2.resize(render(i, rng), (160, 120), interpolation=cv2.INTER_AREA)
        ok, png = cv2.imencode(".png", bgr)
        assert ok
        for k, (topic, fid) in enumerate(((RAW, "front_cam"), (COMPRESSED, "rear_cam"))):
            t = T0 + i * 100_000_000 + k * 10_000_000
            out.append(Frame(topic, t, t - STAMP_LAG, fid, bgr, png.tobytes()))
    return Recording(out, T0 + (frames - 1) * 100_000_000 - 1_000_000 if prompt else None)


# ---------------------------------------------------------------- ROS 2 messages


def _ros2() -> Any:
    return bag_io.make_typestore()


def ros2_cdr(ts: Any, f: Frame) -> tuple[str, bytes]:
    """(type, CDR) of a frame as a ROS 2 driver publishes it."""
    head = bag_io.header_msg(ts, f.stamp_ns, f.frame_id)
    if f.topic == RAW:
        msg = bag_io.image_msg(ts, head, f.bgr, "bgr8")
        return bag_io.IMAGE, bytes(ts.serialize_cdr(msg, bag_io.IMAGE))
    msg = ts.types[bag_io.COMPRESSED_IMAGE](header=head, format="png",
                                            data=np.frombuffer(f.png, np.uint8))
    return bag_io.COMPRESSED_IMAGE, bytes(ts.serialize_cdr(msg, bag_io.COMPRESSED_IMAGE))


def old_name(msgtype: str) -> str:
    """``sensor_msgs/Image`` for ``sensor_msgs/msg/Image``."""
    return msgtype.replace("/msg/", "/")


def write_rosbag2(path: Path, rec: Recording, *, storage: str = "mcap", version: int = 9,
                  old_names: bool = False, compression: tuple[Any, Any] | None = None) -> Path:
    """A rosbag2 of the recording, written by rosbags; with ``old_names`` its
    connections name their types without ``/msg/`` (the definitions given
    by hand: rosbags' typestore knows only the new names)."""
    ts = _ros2()
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(path, version=version, storage_plugin=plugin)
    if compression is not None:
        writer.set_compression(*compression)
    writer.open()
    conns: dict[str, Any] = {}

    def conn(topic: str, msgtype: str) -> Any:
        if topic not in conns:
            msgdef, digest = ts.generate_msgdef(msgtype, ros_version=2)
            name = old_name(msgtype) if old_names else msgtype
            conns[topic] = writer.add_connection(topic, name, msgdef=msgdef, rihs01=digest)
        return conns[topic]

    try:
        for t, kind, what in rec.events():
            if kind == "prompt":
                raw = ts.serialize_cdr(ts.types[bag_io.STRING](data=what), bag_io.STRING)
                writer.write(conn(bag_io.PROMPTS_TOPIC, bag_io.STRING), t, raw)
            else:
                msgtype, raw = ros2_cdr(ts, what)
                writer.write(conn(what.topic, msgtype), t, raw)
    finally:
        writer.close()
    return path


def write_bare_db3(path: Path, rec: Recording) -> Path:
    """A .db3 file alone (its metadata.yaml left behind)."""
    folder = write_rosbag2(path.with_suffix(".d"), rec, storage="sqlite3")
    (db,) = folder.glob("*.db3")
    shutil.move(db, path)
    shutil.rmtree(folder)
    return path


def undecodable(path: Path, frames: int = 3) -> Path:
    """A bag of today's form whose every CompressedImage holds no image."""
    ts = _ros2()
    writer = bag_io.open_writer(path)
    try:
        conn = writer.add_connection(COMPRESSED, bag_io.COMPRESSED_IMAGE, typestore=ts)
        for i in range(frames):
            t = T0 + i * 100_000_000
            msg = ts.types[bag_io.COMPRESSED_IMAGE](
                header=bag_io.header_msg(ts, t, "cam"), format="jpeg",
                data=np.frombuffer(b"not a jpeg", np.uint8))
            writer.write(conn, t, ts.serialize_cdr(msg, bag_io.COMPRESSED_IMAGE))
    finally:
        writer.close()
    return path


# ---------------------------------------------------------------- metadata versions, split


def with_metadata_version(src: Path, dst: Path, version: int) -> Path:
    """A copy of a version 8 bag whose metadata.yaml is as rosbag2 wrote
    version ``version`` (4..8): each later version added a field."""
    shutil.copytree(src, dst)
    meta = yaml.safe_load((dst / "metadata.yaml").read_text())
    info = meta["rosbag2_bagfile_information"]
    assert info["version"] == 8
    info["version"] = version
    if version < 8:
        info.pop("ros_distro", None)
    if version < 7:
        for t in info["topics_with_message_count"]:
            t["topic_metadata"].pop("type_description_hash", None)
    if version < 6:
        info.pop("custom_data", None)
    if version < 5:
        info.pop("files", None)
    (dst / "metadata.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return dst


def write_split(path: Path, rec: Recording, storage: str = "mcap") -> Path:
    """The recording in two storage files, ``<name>_0`` and ``<name>_1``,
    with one metadata.yaml listing both, as rosbag2 splits a recording."""
    half = len(rec.frames) // 2
    parts = [write_rosbag2(path.parent / f"{path.name}.part{k}", Recording(fs, p), storage=storage)
             for k, (fs, p) in enumerate(((rec.frames[:half], None),
                                          (rec.frames[half:], rec.prompt_ns)))]
    path.mkdir()
    metas = [yaml.safe_load((p / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
             for p in parts]
    info = dict(metas[0])
    suffix = ".mcap" if storage == "mcap" else ".db3"
    names = [f"{path.name}_{k}{suffix}" for k in range(2)]
    for part, name, m in zip(parts, names, metas):
        (src,) = part.glob(f"*{suffix}")
        shutil.move(src, path / name)
        m["files"][0]["path"] = name
        shutil.rmtree(part)
    info["relative_file_paths"] = names
    info["files"] = [m["files"][0] for m in metas]
    info["message_count"] = sum(m["message_count"] for m in metas)
    start = min(m["starting_time"]["nanoseconds_since_epoch"] for m in metas)
    end = max(m["starting_time"]["nanoseconds_since_epoch"] + m["duration"]["nanoseconds"]
              for m in metas)
    info["starting_time"] = {"nanoseconds_since_epoch": start}
    info["duration"] = {"nanoseconds": end - start}
    topics: dict[str, Any] = {}
    for m in metas:
        for t in m["topics_with_message_count"]:
            name = t["topic_metadata"]["name"]
            if name in topics:
                topics[name]["message_count"] += t["message_count"]
            else:
                topics[name] = dict(t)
    info["topics_with_message_count"] = list(topics.values())
    (path / "metadata.yaml").write_text(
        yaml.safe_dump({"rosbag2_bagfile_information": info}, sort_keys=False))
    return path


# ---------------------------------------------------------------- Foxglove MCAP


def write_foxglove_protobuf(path: Path, rec: Recording) -> Path:
    """Foxglove's RawImage / CompressedImage in protobuf, as the Foxglove
    SDK and mcap-protobuf-support write them (profile "")."""
    from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
    from foxglove_schemas_protobuf.RawImage_pb2 import RawImage
    from google.protobuf.timestamp_pb2 import Timestamp
    from mcap_protobuf.writer import Writer as ProtobufWriter

    with open(path, "wb") as f, ProtobufWriter(f) as writer:
        for fr in rec.frames:
            stamp = Timestamp(seconds=fr.stamp_ns // 10**9, nanos=fr.stamp_ns % 10**9)
            if fr.topic == RAW:
                h, w = fr.bgr.shape[:2]
                msg: Any = RawImage(timestamp=stamp, frame_id=fr.frame_id, width=w, height=h,
                                    encoding="bgr8", step=w * 3, data=fr.bgr.tobytes())
            else:
                msg = CompressedImage(timestamp=stamp, frame_id=fr.frame_id, data=fr.png,
                                      format="png")
            writer.write_message(fr.topic, msg, log_time=fr.t_ns, publish_time=fr.t_ns)
    return path


# Foxglove's JSON schemas of the two image types (the fields used here).
_TIME = {"type": "object", "properties": {"sec": {"type": "integer", "minimum": 0},
                                          "nsec": {"type": "integer", "minimum": 0}}}
JSON_SCHEMAS = {
    "foxglove.RawImage": {
        "title": "foxglove.RawImage", "type": "object",
        "properties": {"timestamp": _TIME, "frame_id": {"type": "string"},
                       "width": {"type": "integer"}, "height": {"type": "integer"},
                       "encoding": {"type": "string"}, "step": {"type": "integer"},
                       "data": {"type": "string", "contentEncoding": "base64"}}},
    "foxglove.CompressedImage": {
        "title": "foxglove.CompressedImage", "type": "object",
        "properties": {"timestamp": _TIME, "frame_id": {"type": "string"},
                       "data": {"type": "string", "contentEncoding": "base64"},
                       "format": {"type": "string"}}},
}


def foxglove_json(fr: Frame) -> dict[str, Any]:
    stamp = {"sec": fr.stamp_ns // 10**9, "nsec": fr.stamp_ns % 10**9}
    if fr.topic == RAW:
        h, w = fr.bgr.shape[:2]
        return {"timestamp": stamp, "frame_id": fr.frame_id, "width": w, "height": h,
                "encoding": "bgr8", "step": w * 3,
                "data": base64.b64encode(fr.bgr.tobytes()).decode()}
    return {"timestamp": stamp, "frame_id": fr.frame_id, "format": "png",
            "data": base64.b64encode(fr.png).decode()}


def write_bad_protobuf_schema(path: Path) -> Path:
    """A Foxglove RawImage channel whose protobuf schema is no FileDescriptorSet."""
    from mcap.writer import Writer as McapWriter

    with open(path, "wb") as f:
        writer = McapWriter(f)
        writer.start(profile="", library="cass_ros tests")
        schema = writer.register_schema(name="foxglove.RawImage", encoding="protobuf",
                                        data=b"\xff\xff not a descriptor")
        channel = writer.register_channel(topic=RAW, message_encoding="protobuf",
                                          schema_id=schema)
        writer.add_message(channel, log_time=T0, publish_time=T0, data=b"")
        writer.finish()
    return path


def write_foxglove_json(path: Path, rec: Recording, *, bad_message: int | None = None,
                        extra_channel: bool = True, images: bool = True) -> Path:
    """Foxglove's image types JSON-encoded, written with the mcap writer;
    a foxglove.Log channel beside them (ignored). ``bad_message``: that
    frame's message is not JSON."""
    from mcap.writer import Writer as McapWriter

    with open(path, "wb") as f:
        writer = McapWriter(f)
        writer.start(profile="", library="cass_ros tests")
        channels = {}
        if images:
            for topic, name in ((RAW, "foxglove.RawImage"),
                                (COMPRESSED, "foxglove.CompressedImage")):
                schema = writer.register_schema(name=name, encoding="jsonschema",
                                                data=json.dumps(JSON_SCHEMAS[name]).encode())
                channels[topic] = writer.register_channel(topic=topic, message_encoding="json",
                                                          schema_id=schema)
        if extra_channel:
            log_schema = writer.register_schema(name="foxglove.Log", encoding="jsonschema",
                                                data=b'{"type": "object"}')
            log = writer.register_channel(topic="/log", message_encoding="json",
                                          schema_id=log_schema)
            writer.add_message(log, log_time=T0, publish_time=T0, data=b'{"message": "hi"}')
        for i, fr in enumerate(rec.frames if images else []):
            data = b"\x00 not json" if i == bad_message else json.dumps(foxglove_json(fr)).encode()
            writer.add_message(channels[fr.topic], log_time=fr.t_ns, publish_time=fr.t_ns,
                               data=data)
        writer.finish()
    return path


def write_mcap_cdr(path: Path, rec: Recording) -> Path:
    """ROS 2 messages in CDR in an MCAP file whose writer left the profile
    empty and named the types without ``/msg/`` (the mcap writer)."""
    from mcap.writer import Writer as McapWriter

    ts = _ros2()
    with open(path, "wb") as f:
        writer = McapWriter(f)
        writer.start(profile="", library="cass_ros tests")
        channels: dict[str, int] = {}

        def channel(topic: str, msgtype: str) -> int:
            if topic not in channels:
                msgdef, _ = ts.generate_msgdef(msgtype, ros_version=2)
                schema = writer.register_schema(name=old_name(msgtype), encoding="ros2msg",
                                                data=msgdef.encode())
                channels[topic] = writer.register_channel(topic=topic, message_encoding="cdr",
                                                          schema_id=schema)
            return channels[topic]

        for t, kind, what in rec.events():
            if kind == "prompt":
                topic, msgtype = bag_io.PROMPTS_TOPIC, bag_io.STRING
                raw = bytes(ts.serialize_cdr(ts.types[msgtype](data=what), msgtype))
            else:
                topic = what.topic
                msgtype, raw = ros2_cdr(ts, what)
            writer.add_message(channel(topic, msgtype), log_time=t, publish_time=t, data=raw)
        writer.finish()
    return path


# ---------------------------------------------------------------- ROS 1


def write_ros1(path: Path, rec: Recording) -> Path:
    """A ROS 1 bag (rosbags' rosbag1 writer, Noetic's definitions)."""
    ts = get_typestore(Stores.ROS1_NOETIC)
    t = ts.types
    writer = Ros1Writer(path)
    writer.open()
    conns: dict[str, Any] = {}

    def conn(topic: str, msgtype: str) -> Any:
        if topic not in conns:
            conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
        return conns[topic]

    try:
        for when, kind, what in rec.events():
            if kind == "prompt":
                msgtype, msg = bag_io.STRING, t[bag_io.STRING](data=what)
                writer.write(conn(bag_io.PROMPTS_TOPIC, msgtype), when,
                             ts.serialize_ros1(msg, msgtype))
                continue
            f = what
            stamp = t["builtin_interfaces/msg/Time"](sec=f.stamp_ns // 10**9,
                                                     nanosec=f.stamp_ns % 10**9)
            head = t["std_msgs/msg/Header"](seq=7, stamp=stamp, frame_id=f.frame_id)
            if f.topic == RAW:
                h, w = f.bgr.shape[:2]
                msgtype = bag_io.IMAGE
                msg = t[msgtype](header=head, height=h, width=w, encoding="bgr8",
                                 is_bigendian=0, step=w * 3, data=f.bgr.reshape(-1))
            else:
                msgtype = bag_io.COMPRESSED_IMAGE
                msg = t[msgtype](header=head, format="png",
                                 data=np.frombuffer(f.png, np.uint8))
            writer.write(conn(f.topic, msgtype), f.t_ns, ts.serialize_ros1(msg, msgtype))
    finally:
        writer.close()
    return path

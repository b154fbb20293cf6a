"""Rosbag2 input and output with the pure-Python ``rosbags`` library.

Everything here works without a ROS installation: the bag tool, the sample
bag generator, the test harness and the demo all read and write bags through
this module, so the node's output topics look the same whichever of them
wrote the bag. The custom messages are registered from the package's own
``msg/`` definitions, which keeps the bags readable by ``ros2 bag play`` and
Foxglove (the definitions are embedded in the bag).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rosbags.rosbag2 import Writer
    from rosbags.typesys.store import Typestore

    from ..core.prompts import PromptSet
    from ..core.result import SegmentationResult

log = logging.getLogger(__name__)

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
STRING = "std_msgs/msg/String"
OBJECTS = "cass_ros/msg/ObjectPresenceArray"
OBJECT = "cass_ros/msg/ObjectPresence"
CLASS_TABLE = "cass_ros/msg/ClassTable"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)

PROMPTS_TOPIC = "/cass/prompts"
CLASSES_TOPIC = "/cass/classes"

# Registration order matters: ObjectPresenceArray refers to ObjectPresence.
CASS_MESSAGES = ("ObjectPresence", "ObjectPresenceArray", "ClassTable")

STORAGES = ("mcap", "sqlite3")


class BagError(RuntimeError):
    """A bag that cannot be read or written; the message says which and why."""


# ---------------------------------------------------------------------------
# Types

def find_msg_dir() -> Path:
    """The directory holding ObjectPresence.msg and friends.

    Looked up in the source tree first (the repository's ``msg/``), then in
    the install tree (``share/cass_ros/msg``, installed by rosidl), so the
    tool works from a checkout, a colcon install and a pip install alike.
    ``CASS_ROS_MSG_DIR`` overrides both.
    """
    candidates: list[Path] = []
    if os.environ.get("CASS_ROS_MSG_DIR"):
        candidates.append(Path(os.environ["CASS_ROS_MSG_DIR"]))
    here = Path(__file__).resolve().parent
    candidates.append(here.parent / "msg")
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / "share" / "cass_ros" / "msg")
    candidates.append(Path(sys.prefix) / "share" / "cass_ros" / "msg")
    for cand in candidates:
        if (cand / "ObjectPresence.msg").is_file():
            return cand
    raise BagError("cannot find the cass_ros message definitions (ObjectPresence.msg); "
                   "set CASS_ROS_MSG_DIR to the package's msg/ folder")


@cache
def make_typestore(msg_dir: str | None = None) -> "Typestore":
    """A ROS 2 Kilted typestore with the cass_ros messages registered.

    Kilted's standard definitions are the same as Jazzy's and Humble's for
    every type used here (Header, Image, CompressedImage, String,
    RegionOfInterest), so bags written with it play on those too.
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    directory = Path(msg_dir) if msg_dir else find_msg_dir()
    types: dict[str, Any] = {}
    for name in CASS_MESSAGES:
        text = (directory / f"{name}.msg").read_text(encoding="utf-8")
        types.update(get_types_from_msg(text, f"cass_ros/msg/{name}"))
    store.register(types)
    return store


def qos_profile(reliable: bool = True, transient_local: bool = False, depth: int = 10) -> Any:
    """An offered-QoS entry for the bag metadata (``ros2 bag play`` uses it
    to republish latched topics such as /cass/classes as latched)."""
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)

    zero = QosTime(0, 0)  # 0 = the middleware default (infinite)
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=depth,
        reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        deadline=zero,
        lifespan=zero,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=zero,
        avoid_ros_namespace_conventions=False,
    )


# ---------------------------------------------------------------------------
# Writing

def prepare_output_path(path: str | os.PathLike, overwrite: bool) -> Path:
    """Check that ``path`` may be written; with ``overwrite`` remove what is
    there. Never removes anything that is not a directory or a file."""
    out = Path(path)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise BagError(f"output {out} already exists; pass --overwrite to replace it")
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
        else:
            out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def open_writer(path: str | os.PathLike, storage: str = "mcap") -> "Writer":
    """An opened rosbag2 writer (format version 9, as Jazzy and Kilted write)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    if storage not in STORAGES:
        raise BagError(f"unknown storage {storage!r}; use one of {', '.join(STORAGES)}")
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(Path(path), version=9, storage_plugin=plugin)
    writer.open()
    return writer


# ---------------------------------------------------------------------------
# Message builders (rosbags dataclasses)

def time_msg(ts: "Typestore", ns: int) -> Any:
    Time = ts.types["builtin_interfaces/msg/Time"]
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def header_msg(ts: "Typestore", ns: int, frame_id: str) -> Any:
    Header = ts.types["std_msgs/msg/Header"]
    return Header(stamp=time_msg(ts, ns), frame_id=frame_id)


def image_msg(ts: "Typestore", header: Any, array: np.ndarray, encoding: str) -> Any:
    """sensor_msgs/Image from an (H, W) or (H, W, C) array, native byte order."""
    arr = np.ascontiguousarray(array)
    h, w = arr.shape[:2]
    Image = ts.types[IMAGE]
    return Image(
        header=header, height=int(h), width=int(w), encoding=encoding,
        is_bigendian=int(arr.dtype.byteorder == ">" or
                         (arr.dtype.byteorder == "=" and sys.byteorder == "big")),
        step=int(arr.strides[0]), data=arr.reshape(-1).view(np.uint8),
    )


def image_from_fields(ts: "Typestore", header: Any, fields: dict[str, Any]) -> Any:
    """sensor_msgs/Image from the field dictionaries of cass_ros.ros.image_conversion."""
    Image = ts.types[IMAGE]
    return Image(header=header, height=int(fields["height"]), width=int(fields["width"]),
                 encoding=fields["encoding"], is_bigendian=int(fields["is_bigendian"]),
                 step=int(fields["step"]), data=np.frombuffer(fields["data"], np.uint8))


def label_image_msg(ts: "Typestore", header: Any, labels: np.ndarray) -> Any:
    """The segmentation image: mono8, or mono16 when the labels need it
    (the same fields as the node's, from image_conversion.labels_to_fields)."""
    from ..ros.image_conversion import labels_to_fields

    return image_from_fields(ts, header, labels_to_fields(labels))


def color_image_msg(ts: "Typestore", header: Any, rgb: np.ndarray) -> Any:
    from ..ros.image_conversion import rgb_to_fields

    return image_from_fields(ts, header, rgb_to_fields(rgb))


def objects_msg(ts: "Typestore", header: Any, result: "SegmentationResult",
                min_pixels: int = 1, inference_ms: float | None = None) -> Any:
    """cass_ros/ObjectPresenceArray for one result (one entry per class),
    from the node's own field builder so the two cannot disagree."""
    from ..ros.messages import objects_fields

    Presence = ts.types[OBJECT]
    Array = ts.types[OBJECTS]
    Roi = ts.types["sensor_msgs/msg/RegionOfInterest"]
    objects = []
    for f in objects_fields(result, min_pixels):
        f = dict(f)
        f["bbox"] = Roi(**f["bbox"])
        objects.append(Presence(**f))
    if inference_ms is None:  # what the node sends: the segmenter's total
        inference_ms = float(result.timings_ms.get("total", 0.0))
    return Array(header=header, class_names=list(result.class_names), objects=objects,
                 prompt_id=int(result.prompt_id), inference_ms=float(inference_ms))


def class_table_msg(ts: "Typestore", header: Any, prompt_set: "PromptSet", prompt_id: int) -> Any:
    """cass_ros/ClassTable of a prompt set (fields from the node's builder)."""
    from ..ros.messages import class_table_fields

    f = class_table_fields(prompt_set, prompt_id)
    Table = ts.types[CLASS_TABLE]
    return Table(header=header, prompt_id=f["prompt_id"], class_names=f["class_names"],
                 synonyms=f["synonyms"], colors=np.asarray(f["colors"], np.uint8))


# ---------------------------------------------------------------------------
# Message readers

def image_array(msg: Any) -> np.ndarray:
    """The pixels of a mono8/mono16/rgb8 sensor_msgs/Image written by the
    node or the bag tool, as (H, W) or (H, W, 3), decoded by the same code
    as the node's. For camera images of any encoding use ``image_to_rgb``."""
    from ..ros import image_conversion
    from ..ros.messages import labels_from_msg

    if msg.encoding in ("mono8", "mono16"):
        return labels_from_msg(msg)
    if msg.encoding in ("rgb8", "bgr8"):
        return image_conversion.to_rgb(msg)
    raise BagError(f"unexpected output image encoding {msg.encoding!r}")


def image_to_rgb(msg: Any) -> np.ndarray:
    """A camera image (sensor_msgs/Image or CompressedImage, rosbags or rclpy
    message) as (H, W, 3) uint8 RGB, decoded exactly as the node decodes it."""
    from ..ros import image_conversion

    return image_conversion.to_rgb(msg)


# ---------------------------------------------------------------------------
# Topic names

def camera_name(topic: str) -> str:
    """The camera name the node derives from an image topic: the namespace
    above the image topic (``/front/image_raw`` gives ``front``), the
    ``/compressed`` transport suffix ignored."""
    from ..ros import params as node_params

    return node_params.camera_name_from_topic(topic)


def output_topics(camera: str) -> dict[str, str]:
    base = f"/cass/{camera}"
    return {"labels": f"{base}/segmentation", "color": f"{base}/segmentation/color",
            "objects": f"{base}/objects"}


# ---------------------------------------------------------------------------
# Summaries (one row per frame, the JSON keys of docs/ros-interface.md)

def summary_row(objects: Any, *, image: str, topic: str, camera: str, index: int,
                timings_ms: dict[str, float] | None = None,
                size: tuple[int, int] | None = None) -> dict[str, Any]:
    """A summary row from an ObjectPresenceArray (rosbags or rclpy message)."""
    ns = stamp_ns(objects.header.stamp)
    rows = []
    for o in objects.objects:
        rows.append({
            "class_id": int(o.class_id), "label": str(o.label),
            "presence": float(o.presence), "present": bool(o.present),
            "pixel_count": int(o.pixel_count), "area_fraction": float(o.area_fraction),
            "mean_confidence": float(o.mean_confidence),
            "bbox": [int(o.bbox.x_offset), int(o.bbox.y_offset),
                     int(o.bbox.width), int(o.bbox.height)],
        })
    if timings_ms is None:
        timings_ms = {"total": float(objects.inference_ms)}
    return {
        "image": image,  # the source: "<topic>@<stamp>"
        "size": list(size) if size else None,
        "class_names": list(objects.class_names),
        "objects": rows,
        "prompt_id": int(objects.prompt_id),
        "timings_ms": {k: round(float(v), 3) for k, v in timings_ms.items()},
        # Where the frame came from, so rows can be matched with the bag.
        "topic": topic, "camera": camera, "frame_index": index,
        "stamp": ns / 1e9, "stamp_ns": ns, "frame_id": str(objects.header.frame_id),
    }


CSV_COLUMNS = ("frame_index", "camera", "topic", "stamp", "frame_id", "image", "prompt_id",
               "class_id", "label", "presence", "present", "pixel_count", "area_fraction",
               "mean_confidence", "bbox_x", "bbox_y", "bbox_width", "bbox_height", "total_ms")


class SummaryWriter:
    """Summary rows to ``.json`` (one array), ``.jsonl`` (a row a line) or
    ``.csv`` (a line per frame and class, for spreadsheets)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in (".json", ".jsonl", ".csv"):
            raise BagError(f"summary file {self.path} must end in .json, .jsonl or .csv")
        self.kind = suffix[1:]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        # Open for the writer's lifetime (rows arrive one by one); close() closes it.
        self._file = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._csv = None
        if self.kind == "csv":
            self._csv = csv.writer(self._file)
            self._csv.writerow(CSV_COLUMNS)

    def add(self, row: dict[str, Any]) -> None:
        if self.kind == "json":
            self.rows.append(row)  # one array: written on close
        elif self.kind == "jsonl":
            self._file.write(json.dumps(row) + "\n")
        else:
            assert self._csv is not None
            for o in row["objects"]:
                self._csv.writerow([
                    row["frame_index"], row["camera"], row["topic"], stamp_text(row["stamp_ns"]),
                    row["frame_id"], row["image"], row["prompt_id"], o["class_id"], o["label"],
                    f"{o['presence']:.6f}", int(o["present"]), o["pixel_count"],
                    f"{o['area_fraction']:.6f}", f"{o['mean_confidence']:.6f}", *o["bbox"],
                    f"{row['timings_ms'].get('total', 0.0):.3f}",
                ])

    def close(self) -> None:
        if self._file.closed:
            return
        if self.kind == "json":
            json.dump(self.rows, self._file, indent=1)
            self._file.write("\n")
        self._file.close()

    def __enter__(self) -> "SummaryWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stamp_text(ns: int) -> str:
    """Seconds with all nine decimals (a float would round the nanoseconds)."""
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an RGB (H, W, 3) or label (H, W) uint8/uint16 image as PNG."""
    import cv2

    arr = array[..., ::-1] if array.ndim == 3 else array  # OpenCV wants BGR
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(arr)):
        raise OSError(f"cannot write {path}")


def iter_topics(reader: Any, topics: Iterable[str]) -> list[Any]:
    """The reader's connections on ``topics``."""
    wanted = set(topics)
    return [c for c in reader.connections if c.topic in wanted]

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
import re
import shutil
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

import apsw
import cv2
import numpy as np
from rosbags.interfaces import (Connection, MessageDefinitionFormat, Qos, QosDurability,
                                QosHistory, QosLiveliness, QosReliability, QosTime)
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer
from rosbags.rosbag2.storage_mcap import McapReader, read_sized, read_string
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from ..ros.inputs import image_conversion
from ..ros.outputs.messages import POINT_FIELDS, class_table_fields, labels_from_msg, objects_fields
from ..ros.outputs.vision import DETECTIONS_TYPE, LABEL_INFO_TYPE, detections_fields, label_info_fields

from ..core.prompts import PromptSet
from ..core.result import SegmentationResult
from . import inputs
from .inputs.storage import Storage
from .inputs.storage import one_line as _one_line
# The type names live below io and bag.inputs; io is where the tools read them.
from .msgtypes import (CLASS_TABLE, COMPRESSED_IMAGE, FEATURE_IMAGE, FEATURE_VECTOR,  # noqa: F401
                       FEATURE_VECTOR_STAMPED, FEATURES, IMAGE, IMAGE_TYPES, INSTANCE, INSTANCES,
                       OBJECT, OBJECTS, STRING, normalize_msgtype)

log = logging.getLogger(__name__)

PROMPTS_TOPIC = "/cass/prompts"
CLASSES_TOPIC = "/cass/classes"

# Registration order matters: ObjectPresenceArray refers to ObjectPresence.
CASS_MESSAGES = ("ObjectPresence", "ObjectPresenceArray", "ClassTable", "Instance",
                 "InstanceArray", "Features")
# vision_msgs' types that Detection2DArray and LabelInfo use, dependencies first.
VISION_MESSAGES = ("Point2D", "Pose2D", "BoundingBox2D", "ObjectHypothesis",
                   "ObjectHypothesisWithPose", "Detection2D", "Detection2DArray", "VisionClass",
                   "LabelInfo")
# semantic_inference_msgs' types that cass_bag writes, dependencies first.
SEMANTIC_PACKAGE = "semantic_inference_msgs"
SEMANTIC_MESSAGES = ("FeatureVector", "FeatureImage", "FeatureVectorStamped")

STORAGES = ("mcap", "sqlite3")


class BagError(RuntimeError):
    """A bag that cannot be read or written; the message says which and why."""


# ---------------------------------------------------------------------------
# Types

def find_msg_dir() -> Path:
    """The directory holding every definition of CASS_MESSAGES
    (ObjectPresence.msg and friends, Features.msg among them).

    Looked up in the source tree first (the repository's ``msg/``), then in
    the install tree (``share/cass_ros/msg``, installed by rosidl), so the
    tool works from a checkout, a colcon install and a pip install alike;
    a folder of an older cass_ros, lacking some, is passed over.
    ``CASS_ROS_MSG_DIR`` overrides both, and must hold them all.
    """
    def missing(cand: Path) -> list[str]:
        return [f"{n}.msg" for n in CASS_MESSAGES if not (cand / f"{n}.msg").is_file()]

    if os.environ.get("CASS_ROS_MSG_DIR"):
        cand = Path(os.environ["CASS_ROS_MSG_DIR"])
        if missing(cand):
            raise BagError(f"CASS_ROS_MSG_DIR={cand} lacks {', '.join(missing(cand))}: point "
                           "it at the msg/ folder of this cass_ros")
        return cand
    candidates = [Path(__file__).resolve().parents[2] / "msg"]  # <repo>/cass_ros/bag/io.py
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / "share" / "cass_ros" / "msg")
    candidates.append(Path(sys.prefix) / "share" / "cass_ros" / "msg")
    for cand in candidates:
        if not missing(cand):
            return cand
    names = ", ".join(f"{n}.msg" for n in CASS_MESSAGES)
    raise BagError(f"cannot find the cass_ros message definitions ({names}); set "
                   "CASS_ROS_MSG_DIR to the package's msg/ folder")


def find_vision_msg_dir() -> Path | None:
    """The installed vision_msgs definitions (``share/vision_msgs/msg`` of a
    prefix on AMENT_PREFIX_PATH, or of this Python's prefix); None when the
    package is not installed. rosbags' typestores do not hold vision_msgs."""
    return _find_share_msg_dir("vision_msgs", VISION_MESSAGES)


def find_semantic_msg_dir() -> Path | None:
    """semantic_inference_msgs' definitions (``share/semantic_inference_msgs/msg``
    of a prefix on AMENT_PREFIX_PATH, or of this Python's prefix), for the
    outputs of ``semantic_inference: true``; None when the package is not
    there (teams using Hydra build it from source beside cass_ros)."""
    return _find_share_msg_dir(SEMANTIC_PACKAGE, SEMANTIC_MESSAGES)


def _find_share_msg_dir(package: str, names: Sequence[str]) -> Path | None:
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    for prefix in (*prefixes, sys.prefix):
        cand = Path(prefix) / "share" / package / "msg"
        if all((cand / f"{name}.msg").is_file() for name in names):
            return cand
    return None


@cache
def make_typestore() -> Typestore:
    """A ROS 2 Kilted typestore with the cass_ros messages registered, and
    vision_msgs' and semantic_inference_msgs' when they are installed
    (``vision_missing``, ``semantic_missing`` say otherwise).

    Kilted's standard definitions are the same as Jazzy's and Humble's for
    every type used here (Header, Image, CompressedImage, String,
    RegionOfInterest, PoseWithCovariance), so bags written with it play on
    those too.
    """
    store = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for package, directory, names in (
            ("cass_ros", find_msg_dir(), CASS_MESSAGES),
            ("vision_msgs", find_vision_msg_dir(), VISION_MESSAGES),
            (SEMANTIC_PACKAGE, find_semantic_msg_dir(), SEMANTIC_MESSAGES)):
        for name in names if directory is not None else ():
            text = (directory / f"{name}.msg").read_text(encoding="utf-8")
            types.update(get_types_from_msg(text, f"{package}/msg/{name}"))
    store.register(types)
    return store


def vision_missing(ts: Typestore) -> str | None:
    """None when ``ts`` can write the vision_msgs outputs, else why not (one line)."""
    if DETECTIONS_TYPE in ts.types and LABEL_INFO_TYPE in ts.types:
        return None
    return ("the vision_msgs definitions (share/vision_msgs/msg/*.msg) are on no prefix of "
            "AMENT_PREFIX_PATH; install ros-<distro>-vision-msgs (in this repository: "
            "`make build` with ../shared/ros2 present) and source the workspace")


def semantic_missing(ts: Typestore) -> str | None:
    """None when ``ts`` can write semantic_inference's outputs, else why not (one line)."""
    if all(t in ts.types for t in (FEATURE_IMAGE, FEATURE_VECTOR_STAMPED)):
        return None
    return (f"the {SEMANTIC_PACKAGE} definitions (share/{SEMANTIC_PACKAGE}/msg/"
            f"{{{','.join(SEMANTIC_MESSAGES)}}}.msg) are on no prefix of AMENT_PREFIX_PATH; "
            f"build {SEMANTIC_PACKAGE} from source (https://github.com/MIT-SPARK/"
            "semantic_inference) and source its install/setup.bash")


def reading_typestore(connections: Sequence[Connection]) -> Typestore:
    """A typestore for reading a bag: the cass_ros messages as the bag itself
    defines them where it embeds their definitions (a bag recorded before
    ObjectPresence gained its 3D fields keeps its own layout), ours where it
    does not; semantic_inference_msgs' likewise (a bag of cass_bag reads
    without the package); vision_msgs' as installed; the standard messages
    are Kilted's."""
    own = ("cass_ros/", f"{SEMANTIC_PACKAGE}/")
    embedded: dict[str, Any] = {}
    for conn in connections:
        msgdef = conn.msgdef
        if (conn.msgtype.startswith(own) and msgdef.format == MessageDefinitionFormat.MSG
                and msgdef.data):
            types = get_types_from_msg(msgdef.data, conn.msgtype)
            embedded.update({k: v for k, v in types.items() if k.startswith(own)})
    if not embedded:
        return make_typestore()
    store = get_typestore(Stores.ROS2_KILTED)
    ours = make_typestore().fielddefs   # cass_ros's and (when installed) the others'
    store.register({**{k: v for k, v in ours.items() if k.startswith((*own, "vision_msgs/"))},
                    **embedded})
    return store


def qos_profile(reliable: bool = True, transient_local: bool = False, depth: int = 10) -> Qos:
    """An offered-QoS entry for the bag metadata (``ros2 bag play`` uses it
    to republish latched topics such as /cass/classes as latched)."""
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


def open_writer(path: str | os.PathLike, storage: str = "mcap") -> Writer:
    """An opened rosbag2 writer (format version 9, as Jazzy and Kilted write)."""
    if storage not in STORAGES:
        raise BagError(f"unknown storage {storage!r}; use one of {', '.join(STORAGES)}")
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(Path(path), version=9, storage_plugin=plugin)
    writer.open()
    return writer


# ---------------------------------------------------------------------------
# Reading: a bag directory, one storage file, or what a crash left of a bag

STORAGE_SUFFIXES = (".mcap", ".db3")
# A file given as the bag: a storage file, or a ROS 1 bag (bag.inputs).
BAG_FILE_SUFFIXES = (*STORAGE_SUFFIXES, inputs.ROS1_SUFFIX)
MCAP_MAGIC = b"\x89MCAP0\r\n"
# MCAP opcodes: the records a data section may hold, and the two that end it.
_MCAP_DATA_RECORDS = range(0x03, 0x0F)
_MCAP_FOOTER, _MCAP_DATA_END = 0x02, 0x0F
# rosbags' errors for a bag it cannot open, and apsw's for a .db3 that is
# not a database (apsw.Error shares no base class with them).
_OPEN_ERRORS = (ReaderError, OSError, ValueError, KeyError, apsw.Error)
# A whole bag (rosbags' Reader), one storage file read on its own, or a
# recording of another tool converted (bag.inputs.storage.Storage).
_Storage = Reader | McapReader | Sqlite3Reader | Storage


@dataclass
class InputBag:
    """An opened input bag (docs/ros-interface.md, cass_bag): its
    connections, one per topic and type, and its messages. ``cut_short``
    names each storage file that ended early (a crash, a power loss); its
    intact messages are all there is."""

    path: Path
    connections: list[Connection]
    start_time: int
    message_count: int
    cut_short: list[str] = field(default_factory=list)   # "<file>: <where it ends>"
    notes: list[str] = field(default_factory=list)       # how it had to be read
    _storages: list[_Storage] = field(default_factory=list, repr=False)
    _own: list[dict[int, Connection]] = field(default_factory=list, repr=False)

    def messages(self, connections: Sequence[Connection]
                 ) -> Iterator[tuple[Connection, int, bytes]]:
        """(connection, bag time, CDR bytes) of ``connections``' messages, file
        by file; in time order within an intact file, in the order written
        within a cut-short one (its index is lost)."""
        wanted = {c.id for c in connections}
        for storage, own in zip(self._storages, self._own):
            mine = [c for c in storage.connections if own[c.id].id in wanted]
            if not mine:
                continue
            try:
                for conn, t_ns, raw in storage.messages(mine):
                    yield own[conn.id], t_ns, raw
            except ReaderError as e:  # a storage file damaged past its start
                raise BagError(f"cannot read bag {self.path}: {_one_line(e)}") from None

    def close(self) -> None:
        for storage in self._storages:
            storage.close()
        self._storages = []

    def __enter__(self) -> InputBag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_input_bag(path: str | os.PathLike) -> InputBag:
    """Open a rosbag2 directory or one of its .mcap / .db3 files for reading;
    or a recording of another tool (bag.inputs): a ROS 1 .bag file, an MCAP
    file of another profile than ros2 (Foxglove's).

    A directory whose metadata.yaml is missing or unreadable (a recording
    that was never closed) is read from its storage files; an .mcap file cut
    short, without its summary and footer, from its intact records. Anything
    else that is not a readable bag raises BagError with one line saying why.
    """
    path = Path(path)
    if inputs.is_foreign(path):
        storages, _ = _open_storage_files(path, [path])
        return _input_bag(path, storages, storages[0].metadata.message_count)
    try:
        reader = Reader(path)
        reader.open()
    except _OPEN_ERRORS as e:
        first_error: BaseException = e
    else:
        return _input_bag(path, [reader], reader.message_count)
    files = _storage_files(path)
    if not files:
        raise BagError(f"cannot read bag {path}: {_why_not_a_bag(path, first_error)}")
    storages, cut_short = _open_storage_files(path, files)
    bag = _input_bag(path, storages, sum(s.metadata.message_count for s in storages))
    bag.cut_short = cut_short
    if path.is_dir():
        names = ", ".join(f.name for f in files)
        if not (path / "metadata.yaml").exists():
            bag.notes.append(f"{path} has no metadata.yaml: read {names} directly")
        elif not cut_short:  # else the storage, not the metadata, stopped rosbags
            bag.notes.append(f"{path}/metadata.yaml cannot be used ({_one_line(first_error)}): "
                             f"read {names} directly")
    if cut_short and not bag.message_count:
        bag.close()
        raise BagError(f"cannot read bag {path}: no message is intact in it "
                       f"({'; '.join(cut_short)})")
    return bag


def _open_storage_files(path: Path, files: list[Path]) -> tuple[list[_Storage], list[str]]:
    """Opened storage readers of ``files`` and, per file cut short, where."""
    storages: list[_Storage] = []
    cut_short: list[str] = []
    try:
        for f in files:
            storage, cut = _open_storage_file(f)
            storages.append(storage)
            if cut:
                cut_short.append(f"{f.name}: {cut}")
    except _OPEN_ERRORS as e:
        for storage in storages:
            storage.close()
        where = "" if path.is_file() else f"{f.name}: "
        raise BagError(f"cannot read bag {path}: {where}{_one_line(e)}") from None
    return storages, cut_short


def _input_bag(path: Path, storages: list[_Storage], message_count: int) -> InputBag:
    """Storages' connections merged by (topic, type), as one bag; every type
    named as ``pkg/msg/Type`` (``normalize_msgtype``), so that what reads the
    bag and the typestore that deserialises its messages need one name only."""
    first: dict[tuple[str, str], Connection] = {}
    counts: dict[tuple[str, str], int] = {}
    for storage in storages:
        for c in storage.connections:
            key = (c.topic, normalize_msgtype(c.msgtype))
            first.setdefault(key, c._replace(msgtype=key[1]))
            counts[key] = counts.get(key, 0) + c.msgcount
    merged = {key: c._replace(id=i, msgcount=counts[key])
              for i, (key, c) in enumerate(first.items(), start=1)}
    own = [{c.id: merged[(c.topic, normalize_msgtype(c.msgtype))] for c in s.connections}
           for s in storages]
    starts = [s.start_time if isinstance(s, Reader) else s.metadata.start_time for s in storages]
    return InputBag(path, list(merged.values()), min(starts, default=2**63 - 1), message_count,
                    _storages=storages, _own=own)


def _storage_files(path: Path) -> list[Path]:
    """The .mcap / .db3 files of a bag directory in recording order
    (``name_2`` before ``name_10``), or the file itself."""
    if path.is_file():
        return [path] if path.suffix in BAG_FILE_SUFFIXES else []
    if not path.is_dir():
        return []

    def order(p: Path) -> tuple[str, int]:
        m = re.search(r"_(\d+)$", p.stem)
        return (p.stem[: m.start()] if m else p.stem, int(m.group(1)) if m else -1)

    return sorted((p for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES and p.is_file()),
                  key=order)


def _why_not_a_bag(path: Path, error: BaseException) -> str:
    if path.is_dir():
        if (path / "metadata.yaml").exists():
            return _one_line(error)  # rosbags says what is wrong with the metadata
        inner = sorted(p.name for p in path.iterdir() if (p / "metadata.yaml").is_file())
        if inner:  # the folder of the recordings instead of one of them
            return (f"not a rosbag2 directory, but it holds the bag(s) {', '.join(inner[:3])}"
                    f"{', ...' if len(inner) > 3 else ''}: pass one of them")
        held = f"it holds {len(list(path.iterdir()))} other file(s)" if any(path.iterdir()) \
            else "it is empty"
        return f"not a rosbag2 directory: no metadata.yaml and no .mcap or .db3 file ({held})"
    return (f"not a rosbag2: expected a bag directory, an .mcap or .db3 file or a ROS 1 "
            f".bag file, not {path.suffix or 'a file without a suffix'}")



def _open_storage_file(path: Path) -> tuple[_Storage, str]:
    """An opened rosbags storage reader of one file, and where it was cut
    short ("" when it is whole). Raises ReaderError (or apsw.Error) when
    nothing of it can be read."""
    if inputs.is_foreign(path):
        return inputs.open_foreign(path), ""
    if path.suffix == ".db3":
        db = Sqlite3Reader(path)
        db.open()
        return db, ""
    whole = McapReader(path)
    try:
        whole.open()
        return whole, ""
    except ReaderError as e:
        error = e
    cut = CutMcapReader(path)
    cut.open()
    if not cut.cut_short:
        cut.close()
        raise error  # whole, yet rosbags cannot read it: not a truncation
    return cut, cut.cut_short


class CutMcapReader(McapReader):
    """An MCAP file cut short: no summary, no footer, maybe half a record at
    the end. rosbags reads an MCAP file without a summary by scanning it
    (``meta_scan`` / ``messages_scan``) but first wants the footer; this
    reader instead scans up to the last complete record. Messages come in
    the order they were written, as recorded."""

    cut_short = ""  # where the file ends, "" when it is whole

    def _open(self) -> None:
        bio = self.bio
        assert bio is not None
        if bio.read(8) != MCAP_MAGIC:
            raise ReaderError("File magic is invalid (not an MCAP file).")
        if bio.read(1) != b"\x01":
            raise ReaderError("Unexpected record (no MCAP header).")
        if read_string(BytesIO(read_sized(bio))) != "ros2":
            raise ReaderError("Profile is not ros2.")
        self.data_start = bio.tell()
        self.data_end, self.cut_short = _intact_end(bio, self.data_start)
        self.meta_scan()
        stats = self.statistics
        assert stats is not None
        counts = stats.channel_message_counts
        self.connections = [c._replace(msgcount=counts.get(c.id, 0)) for c in self.connections]
        if stats.message_count:
            self.metadata = self.metadata._replace(
                duration=stats.end_time - stats.start_time + 1, start_time=stats.start_time,
                end_time=stats.end_time + 1, message_count=stats.message_count)

    def messages(self, connections: Sequence[Connection], start: int | None = None,
                 stop: int | None = None) -> Iterator[tuple[Connection, int, bytes]]:
        # Without the index nothing says a later chunk holds no earlier
        # message: the file order it is (McapReader.messages would refuse
        # the first message out of time order).
        return self.messages_scan(connections, start, stop)


def _intact_end(bio: BinaryIO, pos: int) -> tuple[int, str]:
    """(end of the last complete data record, where the file was cut short:
    "" when its data section ends properly)."""
    size = bio.seek(0, os.SEEK_END)
    while pos + 9 <= size:
        bio.seek(pos)
        op, length = struct.unpack("<BQ", bio.read(9))
        if op in (_MCAP_DATA_END, _MCAP_FOOTER):  # the data section is whole
            return pos, "" if _has_end_magic(bio) else "its summary section is cut short"
        if op not in _MCAP_DATA_RECORDS or pos + 9 + length > size:
            break  # half a record, or what a power loss leaves (zeros)
        pos += 9 + length
    return pos, f"cut short at byte {pos} of {size}"


def _has_end_magic(bio: BinaryIO) -> bool:
    bio.seek(-len(MCAP_MAGIC), os.SEEK_END)
    return bio.read(len(MCAP_MAGIC)) == MCAP_MAGIC

# ---------------------------------------------------------------------------
# Message builders (the typestore makes their classes at run time, hence Any)

def time_msg(ts: Typestore, ns: int) -> Any:
    Time = ts.types["builtin_interfaces/msg/Time"]
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def header_msg(ts: Typestore, ns: int, frame_id: str) -> Any:
    Header = ts.types["std_msgs/msg/Header"]
    return Header(stamp=time_msg(ts, ns), frame_id=frame_id)


def image_msg(ts: Typestore, header: Any, array: np.ndarray, encoding: str) -> Any:
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


def image_from_fields(ts: Typestore, header: Any, fields: dict[str, Any]) -> Any:
    """sensor_msgs/Image from the field dictionaries of cass_ros.ros.inputs.image_conversion."""
    Image = ts.types[IMAGE]
    return Image(header=header, height=int(fields["height"]), width=int(fields["width"]),
                 encoding=fields["encoding"], is_bigendian=int(fields["is_bigendian"]),
                 step=int(fields["step"]), data=np.frombuffer(fields["data"], np.uint8))


def label_image_msg(ts: Typestore, header: Any, labels: np.ndarray) -> Any:
    """The segmentation image: mono8, or mono16 when the labels need it
    (the same fields as the node's, from image_conversion.labels_to_fields)."""
    return image_from_fields(ts, header, image_conversion.labels_to_fields(labels))


def color_image_msg(ts: Typestore, header: Any, rgb: np.ndarray) -> Any:
    return image_from_fields(ts, header, image_conversion.rgb_to_fields(rgb))


def objects_msg(ts: Typestore, header: Any, result: SegmentationResult,
                min_pixels: int = 1) -> Any:
    """cass_ros/ObjectPresenceArray for one result (one entry per class),
    from the node's own field builder so the two cannot disagree;
    inference_ms is the segmenter's total, as the node sends it."""
    Presence = ts.types[OBJECT]
    Array = ts.types[OBJECTS]
    Roi = ts.types["sensor_msgs/msg/RegionOfInterest"]
    Point = ts.types["geometry_msgs/msg/Point"]
    objects = []
    for f in objects_fields(result, min_pixels):
        f = dict(f)
        f["bbox"] = Roi(**f["bbox"])
        f.update({k: Point(**f[k]) for k in POINT_FIELDS})
        objects.append(Presence(**f))
    return Array(header=header, class_names=list(result.class_names), objects=objects,
                 prompt_id=int(result.prompt_id),
                 inference_ms=float(result.timings_ms.get("total", 0.0)))


def detections_msg(ts: Typestore, header: Any, result: SegmentationResult,
                   min_pixels: int = 1) -> Any:
    """vision_msgs/Detection2DArray of one result, from the node's field
    builder (cass_ros.ros.outputs.vision); ``header`` on the array and each detection."""
    return detections_from_fields(ts, header, detections_fields(result, min_pixels))


def detections_from_fields(ts: Typestore, header: Any, fields: Sequence[dict[str, Any]]) -> Any:
    """vision_msgs/Detection2DArray of Detection2D field dictionaries (per
    class, or per track: ros.outputs.instances.instance_detection_fields)."""
    t = ts.types
    pfx = "vision_msgs/msg/"
    detections = []
    for f in fields:
        c = f["bbox"]["center"]
        center = t[pfx + "Pose2D"](position=t[pfx + "Point2D"](**c["position"]), theta=c["theta"])
        bbox = t[pfx + "BoundingBox2D"](center=center, size_x=f["bbox"]["size_x"],
                                        size_y=f["bbox"]["size_y"])
        results = [t[pfx + "ObjectHypothesisWithPose"](
            hypothesis=t[pfx + "ObjectHypothesis"](**r["hypothesis"]), pose=_zero_pose(ts))
            for r in f["results"]]
        detections.append(t[pfx + "Detection2D"](header=header, results=results, bbox=bbox,
                                                 id=f["id"]))
    return t[DETECTIONS_TYPE](header=header, detections=detections)


def _zero_pose(ts: Typestore) -> Any:
    """geometry_msgs/PoseWithCovariance as rclpy's default: identity, zero covariance."""
    t = ts.types
    g = "geometry_msgs/msg/"
    pose = t[g + "Pose"](position=t[g + "Point"](x=0.0, y=0.0, z=0.0),
                         orientation=t[g + "Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))
    return t[g + "PoseWithCovariance"](pose=pose, covariance=np.zeros(36, np.float64))


def instance_array_msg(ts: Typestore, header: Any, result: SegmentationResult,
                       fields: Sequence[dict[str, Any]]) -> Any:
    """cass_ros/InstanceArray from the node's field builder
    (ros.outputs.instances.instance_fields)."""
    Roi = ts.types["sensor_msgs/msg/RegionOfInterest"]
    Point = ts.types["geometry_msgs/msg/Point"]
    items = [ts.types[INSTANCE](**dict(f, bbox=Roi(**f["bbox"]),
                                       **{k: Point(**f[k]) for k in POINT_FIELDS}))
             for f in fields]
    return ts.types[INSTANCES](header=header, prompt_id=int(result.prompt_id),
                               class_names=list(result.class_names), instances=items)


def features_msg(ts: Typestore, header: Any, fields: dict[str, Any]) -> Any:
    """cass_ros/Features from the node's field builder
    (ros.outputs.features.features_fields)."""
    return ts.types[FEATURES](**dict(
        fields, header=header, data=np.frombuffer(fields["data"], np.uint8),
        scale=np.asarray(fields["scale"], np.float64),
        offset=np.asarray(fields["offset"], np.float64),
        image_embedding=np.asarray(fields["image_embedding"], np.float32)))


def feature_vector_msg(ts: Typestore, header: Any, fields: dict[str, Any]) -> Any:
    """semantic_inference_msgs/FeatureVectorStamped from the node's field
    builder (ros.outputs.semantic_inference.feature_vector_fields)."""
    vec = ts.types[FEATURE_VECTOR](data=np.asarray(fields["feature"]["data"], np.float32))
    return ts.types[FEATURE_VECTOR_STAMPED](header=header, feature=vec)


def feature_image_msg(ts: Typestore, header: Any, fields: dict[str, Any]) -> Any:
    """semantic_inference_msgs/FeatureImage from the node's field builder
    (ros.outputs.semantic_inference.feature_image_fields); the image under
    the same header, as the node sends it."""
    vec = ts.types[FEATURE_VECTOR]
    return ts.types[FEATURE_IMAGE](
        header=header, mask_ids=np.asarray(fields["mask_ids"], np.int32),
        image=image_from_fields(ts, header, fields["image"]),
        features=[vec(data=np.asarray(f["data"], np.float32)) for f in fields["features"]])


def label_info_msg(ts: Typestore, header: Any, prompt_set: PromptSet,
                   prob_threshold: float) -> Any:
    """vision_msgs/LabelInfo of a prompt set (fields from the node's builder)."""
    f = label_info_fields(prompt_set, prob_threshold)
    cls = ts.types["vision_msgs/msg/VisionClass"]
    return ts.types[LABEL_INFO_TYPE](header=header,
                                     class_map=[cls(**c) for c in f["class_map"]],
                                     threshold=f["threshold"])


def class_table_msg(ts: Typestore, header: Any, prompt_set: PromptSet, prompt_id: int) -> Any:
    """cass_ros/ClassTable of a prompt set (fields from the node's builder)."""
    f = class_table_fields(prompt_set, prompt_id)
    Table = ts.types[CLASS_TABLE]
    return Table(header=header, prompt_id=f["prompt_id"], class_names=f["class_names"],
                 synonyms=f["synonyms"], colors=np.asarray(f["colors"], np.uint8))


# ---------------------------------------------------------------------------
# Message readers

def image_array(msg: Any) -> np.ndarray:
    """The pixels of a mono8/mono16/rgb8/32SC1 sensor_msgs/Image written by the
    node or the bag tool, as (H, W) or (H, W, 3), decoded by the same code
    as the node's. For camera images of any encoding use ``image_to_rgb``."""
    if msg.encoding in ("mono8", "mono16"):
        return labels_from_msg(msg)
    if msg.encoding in ("rgb8", "bgr8"):
        return image_conversion.to_rgb(msg)
    if msg.encoding == "32SC1":     # the instance image (little endian, unpadded)
        return np.frombuffer(bytes(msg.data), "<i4").reshape(msg.height, msg.width)
    raise BagError(f"unexpected output image encoding {msg.encoding!r}")


def image_to_rgb(msg: Any) -> np.ndarray:
    """A camera image (sensor_msgs/Image or CompressedImage, rosbags or rclpy
    message) as (H, W, 3) uint8 RGB, decoded exactly as the node decodes it."""
    return image_conversion.to_rgb(msg)


# ---------------------------------------------------------------------------
# Topic names

def output_topics(camera: str) -> dict[str, str]:
    base = f"/cass/{camera}"
    return {"labels": f"{base}/segmentation", "color": f"{base}/segmentation/color",
            "objects": f"{base}/objects", "detections": f"{base}/detections",
            "label_info": f"{base}/label_info", "instances": f"{base}/instances",
            "instance_objects": f"{base}/instance_objects", "features": f"{base}/features"}


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
    arr = array[..., ::-1] if array.ndim == 3 else array  # OpenCV wants BGR
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(arr)):
        raise OSError(f"cannot write {path}")


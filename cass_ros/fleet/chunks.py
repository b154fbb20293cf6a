"""Chunks: one long bag run in parts side by side, then joined into the
one output bag the whole run gives (docs/ros-interface.md, cass_fleet).

A chunk is a range of frame positions (the chosen image topics' messages in
bag order, as ``cass_bag`` reads them); ``bag.tool``'s ``frame_range``
runs it, giving it the other messages between the previous chunk's last
frame and its own last one (the last chunk: to the end of the bag), and
putting the prompt messages before it in force unwritten, so that its
prompt_ids are the whole run's. Joined in order, the parts hold the whole
run's messages in its order: the same topics, messages and bag times.

Temporal smoothing, presence hysteresis and tracks carry state from frame
to frame of a camera, which a chunk would start afresh: with any of them on
chunking is refused (``bag.tool.chunking_refused``), not approximated.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rosbags.interfaces import Connection, MessageDefinitionFormat
from rosbags.rosbag2 import Reader, Writer

from ..bag import io as bag_io
from ..bag.tool import COLOR_TABLE_NAME


def frame_ranges(frames: int, chunk_frames: int) -> list[tuple[int, int | None]]:
    """The chunks of a bag of ``frames`` frames: [(start, stop)], the last
    one open (None: to the end of the bag); one chunk when it is not larger
    than ``chunk_frames`` or chunking is off (0)."""
    if chunk_frames <= 0 or frames <= chunk_frames:
        return [(0, None)]
    starts = list(range(0, frames, chunk_frames))
    return [(a, b) for a, b in zip(starts, starts[1:])] + [(starts[-1], None)]


def _add_like(writer: Writer, conn: Connection) -> Connection:
    """A connection like ``conn`` (its definition and offered QoS) in ``writer``."""
    qos = list(getattr(conn.ext, "offered_qos_profiles", []) or [])
    if conn.digest and conn.msgdef.format == MessageDefinitionFormat.MSG and conn.msgdef.data:
        return writer.add_connection(conn.topic, conn.msgtype, msgdef=conn.msgdef.data,
                                     rihs01=conn.digest, offered_qos_profiles=qos)
    return writer.add_connection(conn.topic, conn.msgtype, typestore=bag_io.make_typestore(),
                                 offered_qos_profiles=qos)


def join_bags(parts: list[Path], out: Path, storage: str) -> int:
    """The chunks' output bags, in order, as one bag ``out`` (which must
    not exist); the connections in the first part's order (every part has
    them all: cass_bag opens them before the first message). The colour
    tables beside them: every ``color_table_<id>.csv`` (the same set's is
    the same file in each part), ``color_table.csv`` the last part's.
    Returns the messages written."""
    writer = bag_io.open_writer(out, storage)
    written = 0
    try:
        conns: dict[tuple[str, str], Connection] = {}
        for part in parts:
            with Reader(part) as reader:
                for c in reader.connections:
                    if (c.topic, c.msgtype) not in conns:
                        conns[(c.topic, c.msgtype)] = _add_like(writer, c)
                for c, t_ns, raw in reader.messages():
                    writer.write(conns[(c.topic, c.msgtype)], t_ns, raw)
                    written += 1
    finally:
        writer.close()
    for part in parts:
        for table in sorted(part.glob("color_table_*.csv")):
            shutil.copy2(table, out / table.name)
    for part in reversed(parts):
        if (part / COLOR_TABLE_NAME).is_file():
            shutil.copy2(part / COLOR_TABLE_NAME, out / COLOR_TABLE_NAME)
            break
    return written


def join_summaries(parts: list[Path], out: Path) -> None:
    """Per-frame summaries of the chunks, in order, as cass_bag writes one:
    a .json array, .jsonl lines, a .csv with one header line."""
    suffix = out.suffix.lower()
    if suffix == ".json":
        rows: list = []
        for p in parts:
            rows.extend(json.loads(p.read_text(encoding="utf-8")))
        with open(out, "w", newline="", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
            f.write("\n")
        return
    with open(out, "wb") as f:  # bytes: the csv module's line ends stay as written
        for i, p in enumerate(parts):
            data = p.read_bytes()
            if suffix == ".csv" and i > 0:
                data = data.split(b"\n", 1)[1] if b"\n" in data else b""
            f.write(data)


def merge_folders(parts: list[Path], out: Path) -> None:
    """The chunks' overlay folders (distinct file names: frame indices) into one."""
    for part in parts:
        if not part.is_dir():
            continue
        for f in sorted(part.rglob("*")):
            if f.is_file():
                dest = out / f.relative_to(part)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(f), dest)

"""cass_bag: segment the camera images of a rosbag2 offline.

    cass_bag INPUT_BAG --out OUTPUT_BAG [--params-file YAML] [--topics T ...]
             [--overlays DIR] [--summary FILE] [--overwrite]

Reads a rosbag2 (sqlite3 or mcap; a bag directory or its .mcap/.db3 file),
segments the chosen image topics (sensor_msgs/Image or CompressedImage) with
the segmenter and parameters file of the node, and writes a new bag with the
node's output topics:

    /cass/<cam>/segmentation        sensor_msgs/Image mono8 (mono16 > 255 classes)
    /cass/<cam>/segmentation/color  sensor_msgs/Image rgb8 overlay
    /cass/<cam>/objects             cass_ros/ObjectPresenceArray
    /cass/classes                   cass_ros/ClassTable (latched)

each output at the bag time of its input frame, with the input's header.
Prompt messages in the bag (/cass/prompts, std_msgs/String) apply from the
next frame on, as in the node. Unlike the node, every frame is segmented (no
frame is dropped offline). Needs no ROS installation: rosbags does the I/O.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import io as bag_io
from ..core.config import ConfigError, read_settings_file

log = logging.getLogger("cass_bag")

EXIT_USAGE = 2


@dataclass
class BagToolOptions:
    """What ``cass_bag`` is asked to do (the command line, as data)."""

    input_bag: Path
    out: Path
    params_file: Path | None = None
    topics: list[str] = field(default_factory=list)
    overlays: Path | None = None
    summary: Path | None = None
    overwrite: bool = False
    settings: dict[str, Any] = field(default_factory=dict)  # --set, over the params file
    storage: str = "mcap"
    color: bool = True
    copy_input: bool = False
    progress: bool = True


@dataclass
class BagToolReport:
    frames_in: int = 0
    frames_out: int = 0
    frames_bad: int = 0            # could not be decoded
    frames_without_prompts: int = 0
    prompts_accepted: int = 0
    prompts_rejected: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class _Stream:
    topic: str
    msgtype: str
    camera: str
    outputs: dict[str, Any] = field(default_factory=dict)  # kind -> writer connection
    count: int = 0


def _select_topics(image_topics: dict[str, str], wanted: Sequence[str],
                   params_topics: Sequence[str] | None, transport: str) -> list[str]:
    """The image topics to segment.

    ``--topics`` wins; else the node's ``image_topics`` from the parameters
    file (with its transport); else every image topic of the bag, skipping
    ``<t>/compressed`` when ``<t>`` is there raw (one stream per camera).
    """
    available = ", ".join(f"{t} ({m.rsplit('/', 1)[-1]})" for t, m in sorted(image_topics.items()))
    available = available or "none"
    if wanted:
        missing = [t for t in wanted if t not in image_topics]
        if missing:
            raise bag_io.BagError(f"topic(s) {', '.join(missing)} not found as images in the bag; "
                                  f"image topics in the bag: {available}")
        return list(dict.fromkeys(wanted))
    if params_topics:
        chosen = [t + "/compressed" if transport == "compressed" else t for t in params_topics]
        missing = [t for t in chosen if t not in image_topics]
        if missing:
            raise bag_io.BagError(f"image_topics of the parameters file ({', '.join(missing)}) "
                                  f"not found in the bag; image topics in the bag: {available}; "
                                  "choose with --topics")
        return chosen
    chosen = [t for t in sorted(image_topics)
              if not (t.endswith("/compressed") and t[: -len("/compressed")] in image_topics)]
    if not chosen:
        raise bag_io.BagError("the bag has no sensor_msgs/Image or CompressedImage topic")
    return chosen


def run(opts: BagToolOptions) -> BagToolReport:
    """Do the work of ``cass_bag``; raises BagError / ConfigError / PromptError /
    WeightsError with a message meant for the user."""
    from rosbags.rosbag2 import Reader
    from rosbags.rosbag2.errors import ReaderError

    from ..ros import params as node_params
    from ..ros.image_conversion import ImageConversionError
    from ..core.prompts import PromptError, build_prompt_set, parse_prompt_text
    from ..core.visualize import overlay, palette

    started = time.perf_counter()
    report = BagToolReport()

    # -- settings: exactly as the node reads its parameters file
    values: dict[str, Any] = {}
    if opts.params_file is not None:
        values.update(read_settings_file(opts.params_file))
    values.update(opts.settings)
    unknown = sorted(set(values) - set(node_params.SPECS))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}; known: "
                          f"{', '.join(node_params.SPECS)}")
    config, runtime = node_params.settings_from_values(values)
    no_prompt_reason = ""
    try:
        initial_prompts = node_params.prompt_set_from_values(config, {})
    except PromptError as e:
        initial_prompts = None
        no_prompt_reason = str(e)

    # -- input
    in_path = Path(opts.input_bag)
    if not in_path.exists():
        raise bag_io.BagError(f"input bag {in_path} does not exist")
    out_path = Path(opts.out)
    if _same_path(in_path, out_path) or _inside(in_path, out_path):
        raise bag_io.BagError(f"--out {out_path} would overwrite the input bag")
    reader = Reader(in_path)
    try:
        reader.open()
    except (ReaderError, OSError, ValueError, KeyError) as e:
        raise bag_io.BagError(f"cannot read bag {in_path}: {e}") from None

    try:
        image_topics = {c.topic: c.msgtype for c in reader.connections
                        if c.msgtype in bag_io.IMAGE_TYPES}
        params_topics = list(values["image_topics"]) if "image_topics" in values else None
        topics = _select_topics(image_topics, opts.topics, params_topics, runtime.image_transport)
        if runtime.camera_names and len(runtime.camera_names) == len(topics):
            cameras = list(runtime.camera_names)
        else:
            cameras = node_params.camera_names_for(topics)
        streams = {t: _Stream(t, image_topics[t], cam) for t, cam in zip(topics, cameras)}
        prompt_conns = [c for c in reader.connections
                        if c.topic == bag_io.PROMPTS_TOPIC and c.msgtype == bag_io.STRING]
        if initial_prompts is None and not prompt_conns:
            raise ConfigError(f"{no_prompt_reason} (and the bag has no {bag_io.PROMPTS_TOPIC} "
                              "message)")
        for s in streams.values():
            log.info("segmenting %s (%s) as camera '%s'", s.topic, s.msgtype.rsplit("/", 1)[-1],
                     s.camera)

        # -- outputs: refuse to overwrite before the slow model load
        bag_io.prepare_output_path(out_path, opts.overwrite)
        if opts.overlays is not None:
            _check_free(Path(opts.overlays), opts.overwrite, "--overlays", directory=True)
        if opts.summary is not None:
            _check_free(Path(opts.summary), opts.overwrite, "--summary", directory=False)

        from ..core.segmenter import Segmenter

        segmenter = Segmenter(config)
        ts = bag_io.make_typestore()
        # prompt_id as in the node: 1 for the starting set, +1 per accepted change.
        next_prompt_id = 1
        prepared = None
        if initial_prompts is not None:
            prepared = segmenter.prepare_prompts(initial_prompts, prompt_id=next_prompt_id)
            next_prompt_id += 1

        summary = bag_io.SummaryWriter(opts.summary) if opts.summary is not None else None
        writer = bag_io.open_writer(out_path, opts.storage)
        try:
            reliable = [bag_io.qos_profile(reliable=True)]
            classes_conn = writer.add_connection(
                bag_io.CLASSES_TOPIC, bag_io.CLASS_TABLE, typestore=ts,
                offered_qos_profiles=[bag_io.qos_profile(transient_local=True, depth=1)])
            for s in streams.values():
                names = bag_io.output_topics(s.camera)
                s.outputs["labels"] = writer.add_connection(
                    names["labels"], bag_io.IMAGE, typestore=ts, offered_qos_profiles=reliable)
                if opts.color:
                    s.outputs["color"] = writer.add_connection(
                        names["color"], bag_io.IMAGE, typestore=ts, offered_qos_profiles=reliable)
                s.outputs["objects"] = writer.add_connection(
                    names["objects"], bag_io.OBJECTS, typestore=ts, offered_qos_profiles=reliable)

            copies: dict[int, Any] = {}
            if opts.copy_input:
                for c in reader.connections:
                    copies[c.id] = _copy_connection(writer, c, ts)

            def write_table(t_ns: int) -> None:
                assert prepared is not None
                msg = bag_io.class_table_msg(ts, bag_io.header_msg(ts, t_ns, ""),
                                             prepared.prompt_set, prepared.prompt_id)
                writer.write(classes_conn, t_ns, ts.serialize_cdr(msg, bag_io.CLASS_TABLE))

            if prepared is not None:
                write_table(reader.start_time)

            wanted = [c for c in reader.connections
                      if c.topic in streams or c in prompt_conns or c.id in copies]
            total = sum(c.msgcount for c in reader.connections if c.topic in streams)
            colors = palette(prepared.num_labels) if prepared else None
            bar = _progress(total, opts.progress)
            try:
                for conn, t_ns, raw in reader.messages(connections=wanted):
                    if conn.id in copies:
                        writer.write(copies[conn.id], t_ns, raw)
                    if conn in prompt_conns:
                        text = ts.deserialize_cdr(raw, bag_io.STRING).data
                        try:
                            new_set = build_prompt_set(parse_prompt_text(text),
                                                       config.background_classes)
                        except PromptError as e:
                            report.prompts_rejected += 1
                            log.warning("prompt message at %.3f s rejected, classes kept: %s",
                                        t_ns / 1e9, e)
                            continue
                        if prepared is not None and new_set == prepared.prompt_set:
                            continue  # the node ignores a repeat of the set in force
                        prepared = segmenter.prepare_prompts(new_set, prompt_id=next_prompt_id)
                        next_prompt_id += 1
                        colors = palette(prepared.num_labels)
                        report.prompts_accepted += 1
                        log.info("prompts at %.3f s: %s (prompt_id %d)", t_ns / 1e9,
                                 ", ".join(prepared.class_names[1:]), prepared.prompt_id)
                        write_table(t_ns)
                        continue
                    s = streams.get(conn.topic)
                    if s is None:
                        continue
                    bar.update(1)
                    report.frames_in += 1
                    index = s.count
                    s.count += 1
                    msg = ts.deserialize_cdr(raw, conn.msgtype)
                    if prepared is None:
                        report.frames_without_prompts += 1
                        continue
                    try:
                        rgb = bag_io.image_to_rgb(msg)
                    except ImageConversionError as e:
                        report.frames_bad += 1
                        if report.frames_bad <= 5:
                            log.warning("%s frame %d skipped: %s", s.topic, index, e)
                        continue
                    result = segmenter.segment([rgb], prompts=prepared,
                                               output_size=runtime.output_size)[0]
                    _write_outputs(writer, ts, s, msg.header, t_ns, rgb, result, runtime,
                                   colors, opts, index, summary, overlay, config.short_side)
                    report.frames_out += 1
                    report.per_topic[s.topic] = report.per_topic.get(s.topic, 0) + 1
            finally:
                bar.close()
        finally:
            # A bag cut short by an error or Ctrl-C is still a readable bag.
            writer.close()
            if summary is not None:
                summary.close()
    finally:
        reader.close()
    if report.frames_without_prompts:
        log.warning("%d frame(s) before the first prompt message were not segmented: %s",
                    report.frames_without_prompts, no_prompt_reason)
    if report.frames_bad:
        log.warning("%d frame(s) could not be decoded and were skipped", report.frames_bad)
    report.seconds = time.perf_counter() - started
    return report


def _write_outputs(writer: Any, ts: Any, s: _Stream, header: Any, t_ns: int, rgb: np.ndarray,
                   result: Any, runtime: Any, colors: np.ndarray, opts: BagToolOptions,
                   index: int, summary: bag_io.SummaryWriter | None, overlay: Any,
                   config_short_side: int) -> None:
    labels = result.labels
    out = s.outputs
    msg = bag_io.label_image_msg(ts, header, labels)
    writer.write(out["labels"], t_ns, ts.serialize_cdr(msg, bag_io.IMAGE))
    need_overlay = "color" in out or opts.overlays is not None
    if need_overlay:
        base = rgb
        if base.shape[:2] != labels.shape:  # output_size: model, resized as the node does
            from ..core.preprocess import resize_short_side

            base = resize_short_side(rgb, config_short_side)
        blended = overlay(base, labels, colors, runtime.color_alpha)
        if "color" in out:
            cmsg = bag_io.color_image_msg(ts, header, blended)
            writer.write(out["color"], t_ns, ts.serialize_cdr(cmsg, bag_io.IMAGE))
        if opts.overlays is not None:
            stem = Path(opts.overlays) / s.camera / f"{index:06d}"
            bag_io.write_png(f"{stem}_overlay.png", blended)
            bag_io.write_png(f"{stem}_labels.png", labels)
    omsg = bag_io.objects_msg(ts, header, result, runtime.min_pixels)
    writer.write(out["objects"], t_ns, ts.serialize_cdr(omsg, bag_io.OBJECTS))
    if summary is not None:
        ns = bag_io.stamp_ns(header.stamp)
        summary.add(bag_io.summary_row(
            omsg, image=f"{s.topic}@{bag_io.stamp_text(ns)}",
            topic=s.topic, camera=s.camera, index=index, timings_ms=result.timings_ms,
            size=result.size))


def _copy_connection(writer: Any, conn: Any, ts: Any) -> Any:
    """The same topic in the output bag, keeping the input's definition."""
    from rosbags.interfaces import MessageDefinitionFormat

    qos = list(getattr(conn.ext, "offered_qos_profiles", []) or [])
    if conn.digest and conn.msgdef.format == MessageDefinitionFormat.MSG and conn.msgdef.data:
        return writer.add_connection(conn.topic, conn.msgtype, msgdef=conn.msgdef.data,
                                     rihs01=conn.digest, offered_qos_profiles=qos)
    return writer.add_connection(conn.topic, conn.msgtype, typestore=ts,
                                 offered_qos_profiles=qos)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc="cass_bag", disable=not enabled,
                dynamic_ncols=True)


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _inside(path: Path, parent: Path) -> bool:
    try:
        return path.resolve().is_relative_to(parent.resolve())
    except OSError:
        return False


def _check_free(path: Path, overwrite: bool, flag: str, directory: bool) -> None:
    """Refuse to write over existing overlays or summaries without --overwrite."""
    if directory:
        if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
            raise bag_io.BagError(f"{flag} {path} exists and is not empty; pass --overwrite")
        if path.is_dir() and overwrite:
            # Only our own files: never empty a folder the user pointed at by mistake.
            for png in path.glob("*/*_overlay.png"):
                png.unlink()
            for png in path.glob("*/*_labels.png"):
                png.unlink()
    elif path.exists() and not overwrite:
        raise bag_io.BagError(f"{flag} {path} exists; pass --overwrite")


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``--set key=value`` items, values parsed as YAML (lists, numbers, bools)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cass_bag", description="Segment the camera images of a rosbag2 offline and write "
        "the node's output topics to a new bag.",
        epilog="Example: cass_bag recording/ --out segmented/ --params-file config/cass.yaml "
               "--overlays overlays/ --summary summary.csv")
    p.add_argument("input_bag", type=Path, help="rosbag2 directory (or its .mcap / .db3 file)")
    p.add_argument("--out", type=Path, required=True, help="output bag directory (must not exist)")
    p.add_argument("--params-file", type=Path, help="the node's parameters file "
                   "(config/cass.yaml format) or a flat YAML of settings")
    p.add_argument("--topics", nargs="+", default=[], metavar="T",
                   help="image topics to segment (Image or CompressedImage); default: the "
                   "parameters file's image_topics, else every image topic of the bag")
    p.add_argument("--overlays", type=Path, metavar="DIR",
                   help="also write <DIR>/<camera>/<frame>_overlay.png and _labels.png")
    p.add_argument("--summary", type=Path, metavar="FILE",
                   help="per-frame summary: .json, .jsonl or .csv (one row per frame and class)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output bag, summary and overlay PNGs")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter (e.g. --set device=cpu --set 'prompts=[car, tree]')")
    p.add_argument("--storage", choices=bag_io.STORAGES, default="mcap",
                   help="storage of the output bag (default mcap)")
    p.add_argument("--no-color", dest="color", action="store_false",
                   help="do not write the /segmentation/color overlay topic")
    p.add_argument("--copy-input", action="store_true",
                   help="copy every message of the input bag into the output bag too")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="[%(name)s] %(message)s")
    from ..core.models import WeightsError
    from ..core.prompts import PromptError

    try:
        opts = BagToolOptions(
            input_bag=args.input_bag, out=args.out, params_file=args.params_file,
            topics=list(args.topics), overlays=args.overlays, summary=args.summary,
            overwrite=args.overwrite, settings=_parse_set(args.settings), storage=args.storage,
            color=args.color, copy_input=args.copy_input, progress=args.progress)
        report = run(opts)
    except (bag_io.BagError, ConfigError, PromptError, WeightsError) as e:
        print(f"cass_bag: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("cass_bag: interrupted; the output bag holds the frames done so far",
              file=sys.stderr)
        return 130
    topics = ", ".join(f"{t}: {n}" for t, n in report.per_topic.items()) or "none"
    print(f"cass_bag: {report.frames_out}/{report.frames_in} frames segmented ({topics}) in "
          f"{report.seconds:.1f} s -> {opts.out}")
    if opts.overlays is not None:
        print(f"cass_bag: overlays in {opts.overlays}")
    if opts.summary is not None:
        print(f"cass_bag: summary in {opts.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

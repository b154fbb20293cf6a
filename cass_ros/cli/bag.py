"""``cass_bag``: the command line of the offline bag pipeline
(cass_ros.bag.tool; docs/ros-interface.md, cass_bag).

    cass_bag INPUT_BAG --out OUTPUT_BAG [--params-file YAML] [--topics T ...]
             [--overlays DIR] [--summary FILE] [--overwrite] [--batch N]

Exit codes: 0 done; 1 no frame segmented (every frame undecodable or
before the first prompt set, or none at all: one line says which); 2 bad
arguments, settings, bag or weights (one line on stderr, ``cass_bag:
error: ...``); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..bag import io as bag_io
from ..bag import tool as bag_tool
from ..core.config import ConfigError
from ..core.prompts import PromptError

EXIT_NOTHING_SEGMENTED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``--set key=value`` items, values parsed as YAML (lists, numbers, bools)."""
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
    p.add_argument("input_bag", type=Path, help="rosbag2 directory (or its .mcap / .db3 file), "
                   "a Foxglove MCAP file or a ROS 1 .bag file")
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
    p.add_argument("--batch", type=int, default=1, metavar="N",
                   help="segment N frames per model call (all topics together; faster on a "
                   "GPU; the outputs are the same up to float rounding); default 1")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="[%(name)s] %(message)s")
    try:
        opts = bag_tool.BagToolOptions(
            input_bag=args.input_bag, out=args.out, params_file=args.params_file,
            topics=list(args.topics), overlays=args.overlays, summary=args.summary,
            overwrite=args.overwrite, settings=parse_set(args.settings), storage=args.storage,
            color=args.color, copy_input=args.copy_input, progress=args.progress,
            batch=args.batch)
        report = bag_tool.run(opts)
    except (bag_io.BagError, ConfigError, PromptError) as e:
        print(f"cass_bag: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("cass_bag: interrupted; the output bag holds the frames done so far",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    topics = ", ".join(f"{t}: {n}" for t, n in report.per_topic.items()) or "none"
    print(f"cass_bag: {report.frames_out}/{report.frames_in} frames segmented ({topics}) in "
          f"{report.seconds:.1f} s -> {opts.out}")
    if opts.overlays is not None:
        print(f"cass_bag: overlays in {opts.overlays}")
    if opts.summary is not None:
        print(f"cass_bag: summary in {opts.summary}")
    if not report.frames_out:
        why = bag_tool.nothing_segmented(report.frames_in, report.frames_bad,
                                         report.frames_without_prompts)
        print(f"cass_bag: error: {why}", file=sys.stderr)
        return EXIT_NOTHING_SEGMENTED
    return 0


if __name__ == "__main__":
    sys.exit(main())

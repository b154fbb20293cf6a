#!/usr/bin/env python3
"""The demo behind `make demo`: cass_node on the sample bag, end to end.

1. writes the sample bag (tools/make_sample_bag.py) unless it is there;
2. picks the weights: the pretrained ones (open_clip 'openai' + DINO from
   the hub) when they can be downloaded or are cached, else tiny random
   weights, announced by a banner (the segmentation is then meaningless);
3. starts cass_node as a subprocess (config/cass.yaml + demo settings);
4. plays the bag into it over DDS (lock-step by default: each frame waits
   for the node's output, so a slow CPU still segments every frame;
   ``--rate R`` plays at R x real time and lets the node drop frames);
5. records every output topic into a new bag and writes PNG overlays, a
   per-frame summary (JSON + CSV) and the colour tables of the prompt sets
   (Hydra's CSV layout, docs/ros-interface.md) from what the node published;
6. prints the output folder.

Run from a sourced install tree (`make demo` does that):
    run_demo.py --out demo_output [--rate R] [--weights auto|pretrained|random]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("cass_ros") is None:  # a sourced install tree wins
    sys.path.append(str(REPO))
sys.path.insert(0, str(REPO / "tools"))

import make_sample_bag  # noqa: E402

import bag_player  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402

from cass_ros.bag import io as bag_io  # noqa: E402
from cass_ros.core.visualize import palette, write_color_table  # noqa: E402

log = logging.getLogger("run_demo")

RANDOM_BANNER = """
################################################################################
#  NO PRETRAINED WEIGHTS: the demo runs with tiny RANDOM weights.               #
#  The segmentation below is MEANINGLESS: it only shows that the pipeline runs  #
#  (bag -> DDS -> cass_node -> outputs -> bag, overlays, summary).              #
#  Reason: {reason:<69}#
#  For real results, run once where huggingface.co is reachable (the weights   #
#  are then cached), or point clip_weights / dino_weights (config/cass.yaml)    #
#  at local checkpoint files, or set weights_cache_dir to a pre-filled cache.   #
################################################################################
"""

DEMO_SETTINGS: dict[str, Any] = {
    "prompts": list(make_sample_bag.INITIAL_PROMPTS),
    "publish_color": True,
    # The overlays show what their colours mean (docs/ros-interface.md, overlay_legend).
    "overlay_legend": True,
    # Reliable: a best-effort subscriber of Fast DDS's default set-up loses
    # most 640 x 480 frames between two processes (see test/harness/bag_harness.py).
    "image_qos": "reliable",
}


def hub_reachable(host: str = "huggingface.co") -> bool:
    """Whether the model hub's name resolves (no network here otherwise)."""
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def start_node(out: Path, params_file: Path | None, parameters: dict[str, Any], domain: int,
               offline: bool) -> bag_player.NodeProcess:
    if offline:
        # Cached weights only: fail in seconds instead of retrying a dead network.
        os.environ["HF_HUB_OFFLINE"] = "1"
    node = bag_player.NodeProcess(params_file, out / "node.log", domain, parameters)
    node.start()
    return node


def connect(node: bag_player.NodeProcess, bag: Path, topics: list[str], domain: int
            ) -> bag_player.BagPlayer:
    """A player recording the node's outputs, ready to play (raises
    PlayerError with the node's last log lines if it does not start)."""
    player = bag_player.BagPlayer(domain, name="cass_demo_player")
    try:
        player.record(player.node_output_topics(["camera"]))
        player.advertise(bag, topics)
        player.wait_ready(node, topics, timeout=600.0)
    except BaseException:
        player.close()
        raise
    return player


def write_results(rec: bag_player.Recording, bag: Path, out: Path) -> dict[str, Any]:
    """Output bag, overlays and summaries from what the node published."""
    ts = bag_io.make_typestore()
    bag_times: dict[int, int] = {}
    frames: list[int] = []
    with Reader(bag) as reader:
        for conn, t, raw in reader.messages():
            if conn.topic == make_sample_bag.IMAGE_TOPIC:
                stamp = bag_io.stamp_ns(ts.deserialize_cdr(raw, conn.msgtype).header.stamp)
                bag_times[stamp] = t
                frames.append(stamp)
    rec.write_bag(out / "output_bag", storage="mcap", overwrite=True, bag_times=bag_times)
    overlays = out / "overlays" / "camera"
    for msg in rec.messages("/cass/camera/segmentation/color"):
        i = frames.index(bag_io.stamp_ns(msg.header.stamp))
        bag_io.write_png(overlays / f"{i:06d}_overlay.png", bag_io.image_array(msg))
    for msg in rec.messages("/cass/camera/segmentation"):
        i = frames.index(bag_io.stamp_ns(msg.header.stamp))
        bag_io.write_png(overlays / f"{i:06d}_labels.png", bag_io.image_array(msg))
    objects = rec.messages("/cass/camera/objects")
    for name in ("summary.json", "summary.csv"):
        with bag_io.SummaryWriter(out / name) as summary:
            for msg in objects:
                ns = bag_io.stamp_ns(msg.header.stamp)
                summary.add(bag_io.summary_row(
                    msg, image=f"{make_sample_bag.IMAGE_TOPIC}@{bag_io.stamp_text(ns)}",
                    topic=make_sample_bag.IMAGE_TOPIC, camera="camera",
                    index=frames.index(ns), size=(make_sample_bag.HEIGHT, make_sample_bag.WIDTH)))
    write_color_tables(rec.messages(bag_io.CLASSES_TOPIC), out)
    return {"frames": len(frames), "segmented": len(objects),
            "present": _present_counts(objects)}


def write_color_tables(tables: list[Any], out: Path) -> None:
    """The colour table of each class table the node published, as cass_bag
    writes them beside its bag: color_table_<prompt_id>.csv, and
    color_table.csv holding the last set (the one the node ended with)."""
    for table in sorted(tables, key=lambda t: t.prompt_id):
        names = list(table.class_names)
        for name in (f"color_table_{table.prompt_id}.csv", "color_table.csv"):
            write_color_table(out / name, names, palette(len(names)))


def _present_counts(objects: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for msg in objects:
        for o in msg.objects:
            if o.present:
                counts[o.label] = counts.get(o.label, 0) + 1
    return counts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="cass_node on the sample bag, end to end")
    p.add_argument("--out", type=Path, default=REPO / "demo_output", help="output folder")
    p.add_argument("--bag", type=Path, help="play this bag instead of the sample bag "
                   "(its images must be on /camera/image_raw)")
    p.add_argument("--rate", type=float, default=None,
                   help="play at RATE x real time (the node drops what it cannot follow); "
                   "default: lock-step, every frame waits for the node")
    p.add_argument("--weights", choices=("auto", "pretrained", "random"), default="auto",
                   help="auto: pretrained when they can be had, else tiny random weights")
    p.add_argument("--params-file", type=Path, default=REPO / "config" / "cass.yaml")
    p.add_argument("--device", default=None, help="override the device parameter")
    return p.parse_args(argv)


def clean_outputs(out: Path) -> None:
    """Remove the demo's own outputs of a previous run; the sample bag is kept."""
    out.mkdir(parents=True, exist_ok=True)
    olds = [out / name for name in ("output_bag", "overlays", "summary.json", "summary.csv",
                                    "node.log")]
    for path in olds + sorted(out.glob("color_table*.csv")):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def input_bag(args: argparse.Namespace, out: Path) -> tuple[Path, list[str]]:
    """The bag to play (the sample bag, written once) and its topics to play."""
    bag = args.bag
    if bag is None:
        bag = out / "sample_bag"
        if not (bag / "metadata.yaml").exists():
            make_sample_bag.write_sample_bag(bag, storage="mcap", overwrite=True)
            log.info("sample bag written to %s", bag)
    have = bag_topics(bag)
    return bag, [t for t in (make_sample_bag.IMAGE_TOPIC, bag_io.PROMPTS_TOPIC) if t in have]


@dataclass
class Plan:
    """What one demo run plays, where, with which node settings."""

    out: Path
    bag: Path
    topics: list[str]
    params_file: Path | None
    domain: int
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Session:
    """The node and the player of one demo run, and why random weights."""

    node: Any = None
    player: Any = None
    random_reason: str = ""

    def close(self) -> None:
        if self.player is not None:
            self.player.close()
        if self.node is not None:
            self.node.stop()


def start_pretrained(args: argparse.Namespace, session: Session, plan: Plan) -> None:
    """Try the pretrained weights; on a weights failure note why (auto mode)."""
    offline = not hub_reachable()
    log.info("trying the pretrained weights%s", " (cache only: no network)" if offline else "")
    session.node = start_node(plan.out, plan.params_file, plan.settings, plan.domain,
                              offline)
    try:
        session.player = connect(session.node, plan.bag, plan.topics, plan.domain)
    except bag_player.PlayerError as e:
        session.node.stop()
        session.node = None
        if args.weights == "pretrained" or "weights" not in str(e):
            raise
        session.random_reason = ("pretrained weights not reachable or cached"
                                 if offline else "pretrained weights failed to load")
        log.info("pretrained weights unavailable: %s", e)


def start_random(args: argparse.Namespace, session: Session, plan: Plan) -> None:
    """The node on tiny random weights, announced by the banner."""
    # imports torch: only for this fallback (the node, a subprocess, does
    # the segmenting; the demo itself needs no torch)
    from cass_ros.core.models import save_tiny_random_checkpoints

    clip, dino = save_tiny_random_checkpoints(plan.out / "weights", seed=0)
    # No background names and no threshold: random weights would otherwise
    # leave nearly every pixel at 0 and the overlays empty.
    settings = dict(plan.settings, clip_weights=clip, dino_weights=dino,
                    background_classes=[], prob_threshold=0.0, device=args.device or "cpu")
    print(RANDOM_BANNER.format(reason=session.random_reason[:69]), flush=True)
    session.node = start_node(plan.out, plan.params_file, settings, plan.domain,
                              offline=False)
    session.player = connect(session.node, plan.bag, plan.topics, plan.domain)


def play(args: argparse.Namespace, session: Session, bag: Path, topics: list[str]) -> Any:
    lockstep = args.rate is None
    log.info("playing %s %s", bag, "in lock-step" if lockstep else f"at {args.rate} x")
    rec = session.player.play(bag, topics, rate=args.rate or 1.0, lockstep=lockstep,
                              node=session.node, progress=True, frame_timeout=600.0)
    session.player.settle(quiet_s=2.0, timeout=600.0)
    return rec


def print_report(stats: dict[str, Any], out: Path, random_reason: str) -> None:
    if random_reason:
        print(RANDOM_BANNER.format(reason=random_reason[:69]))
    print(f"\ncass_node segmented {stats['segmented']} of {stats['frames']} frames; "
          f"classes present (frames): {stats['present'] or 'none'}")
    print(f"demo outputs in {out}:")
    for path in sorted(out.iterdir()):
        if path.is_dir():
            n = sum(1 for f in path.rglob("*") if f.is_file())
            print(f"  {path.name}/  ({n} files)")
        else:
            print(f"  {path.name}")
    print(f"look at {out / 'overlays' / 'camera'} (PNG), open {out / 'output_bag'} in Foxglove, "
          f"or read {out / 'summary.csv'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    out: Path = args.out.resolve()
    clean_outputs(out)
    bag, topics = input_bag(args, out)
    settings = dict(DEMO_SETTINGS, **({"device": args.device} if args.device else {}))
    plan = Plan(out, bag, topics, args.params_file if args.params_file.exists() else None,
                bag_player.free_domain_id(), settings)
    session = Session(random_reason="--weights random" if args.weights == "random" else "")
    try:
        if args.weights != "random":
            start_pretrained(args, session, plan)
        if session.player is None:
            start_random(args, session, plan)
        rec = play(args, session, bag, topics)
    except bag_player.PlayerError as e:
        print(f"run_demo: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("run_demo: interrupted", file=sys.stderr)
        return 130
    finally:
        session.close()
    print_report(write_results(rec, bag, out), out, session.random_reason)
    return 0


def bag_topics(path: Path) -> set[str]:
    with Reader(path) as reader:
        return {c.topic for c in reader.connections}


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Write the sample rosbag2: a synthetic street scene as a camera driver
would record it.

Deterministic (a fixed seed, fixed start time): running it twice gives the
same messages, so tests and the demo can generate it at set-up time instead
of keeping a binary bag in git.

Topics (as a usb_cam / v4l2_camera driver publishes them):
- /camera/image_raw             sensor_msgs/Image, bgr8, 640 x 480, ~10 Hz
- /camera/image_raw/compressed  sensor_msgs/CompressedImage, "bgr8; jpeg compressed bgr8"
- /camera/camera_info           sensor_msgs/CameraInfo
- /cass/prompts                 std_msgs/String, once, between two frames

Header stamps start at a fixed epoch time with a little jitter; each message
is logged a few milliseconds after its stamp, like a recorder on the robot.

Usage: make_sample_bag.py OUT_DIR [--storage mcap|sqlite3] [--frames 20] [--overwrite]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# From a checkout without an install tree, use the source tree's cass_ros;
# a sourced install tree (which also holds the generated messages) wins.
if importlib.util.find_spec("cass_ros") is None:
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from cass_ros.bag import io as bag_io  # noqa: E402

log = logging.getLogger("make_sample_bag")

WIDTH, HEIGHT = 640, 480
FRAME_ID = "camera_optical_frame"
IMAGE_TOPIC = "/camera/image_raw"
COMPRESSED_TOPIC = IMAGE_TOPIC + "/compressed"
INFO_TOPIC = "/camera/camera_info"
START_NS = 1_718_000_000_000_000_000  # 2024-06-10, a fixed date keeps the bag reproducible
PERIOD_NS = 100_000_000  # 10 Hz

# What the scene holds, and the prompts that go with it.
INITIAL_PROMPTS = ["car", "house", "stop sign"]
# Published in the bag partway through; applies from PROMPT_AFTER_FRAME + 1 on.
BAG_PROMPT_TEXT = "car|vehicle, sun, wheel, roof"
PROMPT_AFTER_FRAME = 9


@dataclass(frozen=True)
class SampleInfo:
    path: Path
    frames: int
    stamps_ns: list[int]          # header stamp per frame
    log_times_ns: list[int]       # bag time per frame (raw image)
    prompt_log_time_ns: int       # bag time of the /cass/prompts message
    prompt_text: str
    first_frame_after_prompt: int  # index of the first frame logged after it


# ---------------------------------------------------------------------------
# The scene

def render_frame(i: int, rng: np.random.Generator) -> np.ndarray:
    """Frame ``i`` as (480, 640, 3) uint8 BGR: sky, grass, a road, a house, a
    tree, a stop sign, a sun, drifting clouds and a car driving across."""
    img = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    horizon = 260
    # Sky: a vertical gradient from deep to pale blue (BGR).
    t = np.linspace(0.0, 1.0, horizon)[:, None]
    sky = (1 - t) * np.array([200, 140, 60]) + t * np.array([245, 215, 170])
    img[:horizon] = sky[:, None, :].astype(np.uint8)
    img[horizon:] = (60, 150, 70)  # grass
    # Road with dashed centre line.
    cv2.rectangle(img, (0, 380), (WIDTH, 470), (90, 90, 90), -1)
    for x in range(-40 + (i * 12) % 80, WIDTH, 80):
        cv2.rectangle(img, (x, 422), (x + 40, 428), (240, 240, 240), -1)
    # Sun, slowly rising.
    cv2.circle(img, (540, 70 - i), 38, (40, 215, 255), -1)
    # Clouds drifting left to right.
    for cx, cy, s in ((90, 60, 1.0), (330, 95, 0.8)):
        x = int(cx + 3 * i)
        for dx, dy, r in ((0, 0, 28), (30, -12, 32), (62, 0, 26), (30, 8, 26)):
            cv2.circle(img, (int(x + dx * s), int(cy + dy * s)), int(r * s), (250, 250, 250), -1)
    # House: walls, roof, door, windows.
    cv2.rectangle(img, (60, 210), (230, 350), (150, 190, 225), -1)
    roof = np.array([[45, 212], [145, 130], [245, 212]], np.int32)
    cv2.fillPoly(img, [roof], (40, 40, 170))
    cv2.rectangle(img, (125, 280), (165, 350), (30, 70, 110), -1)
    for wx in (80, 185):
        cv2.rectangle(img, (wx, 235), (wx + 30, 265), (230, 200, 150), -1)
        cv2.rectangle(img, (wx, 235), (wx + 30, 265), (60, 60, 60), 2)
    # Tree: trunk and a layered crown.
    cv2.rectangle(img, (300, 240), (322, 355), (30, 60, 100), -1)
    for dx, dy, r in ((0, 0, 45), (-30, 25, 35), (30, 25, 35), (0, -35, 35)):
        cv2.circle(img, (311 + dx, 215 + dy), r, (40, 120 + (dx % 20), 30), -1)
    # Stop sign: pole, red octagon, white text.
    cv2.rectangle(img, (455, 250), (461, 372), (120, 120, 120), -1)
    ang = np.deg2rad(22.5 + 45 * np.arange(8))
    octagon = np.stack([458 + 36 * np.cos(ang), 228 + 36 * np.sin(ang)], 1).astype(np.int32)
    cv2.fillPoly(img, [octagon], (30, 30, 210))
    cv2.putText(img, "STOP", (431, 237), cv2.FONT_HERSHEY_SIMPLEX, 0.62, (255, 255, 255), 2,
                cv2.LINE_AA)
    # Car: drives in from the left, 26 px a frame.
    x0 = -120 + 26 * i
    cv2.rectangle(img, (x0, 395), (x0 + 170, 440), (40, 40, 200), -1)
    cabin = np.array([[x0 + 35, 395], [x0 + 55, 365], [x0 + 120, 365], [x0 + 142, 395]],
                     np.int32)
    cv2.fillPoly(img, [cabin], (40, 40, 190))
    cv2.rectangle(img, (x0 + 60, 371), (x0 + 86, 393), (200, 170, 120), -1)
    cv2.rectangle(img, (x0 + 92, 371), (x0 + 118, 393), (200, 170, 120), -1)
    for wx in (x0 + 38, x0 + 132):
        cv2.circle(img, (wx, 442), 17, (25, 25, 25), -1)
        cv2.circle(img, (wx, 442), 7, (170, 170, 170), -1)
    # Sensor noise and a slight exposure flicker, as a real camera has.
    gain = 1.0 + 0.02 * np.sin(i * 0.7)
    noisy = img.astype(np.float32) * gain + rng.normal(0.0, 3.0, img.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def camera_info_msg(ts, header):
    """A plausible pinhole calibration for a 640 x 480 camera, 60 degrees wide."""
    fx = fy = 554.3
    cx, cy = 319.5, 239.5
    Info = ts.types["sensor_msgs/msg/CameraInfo"]
    Roi = ts.types["sensor_msgs/msg/RegionOfInterest"]
    return Info(
        header=header, height=HEIGHT, width=WIDTH, distortion_model="plumb_bob",
        d=np.zeros(5, np.float64),
        k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1], np.float64),
        r=np.eye(3).reshape(-1),
        p=np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], np.float64),
        binning_x=0, binning_y=0,
        roi=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


# ---------------------------------------------------------------------------
# The bag

def write_sample_bag(out: str | Path, storage: str = "mcap", frames: int = 20,
                     overwrite: bool = False, jpeg_quality: int = 90) -> SampleInfo:
    """Write the sample bag to directory ``out``; return what is in it."""
    out = bag_io.prepare_output_path(out, overwrite)
    ts = bag_io.make_typestore()
    rng = np.random.default_rng(20240610)
    camera_qos = [bag_io.qos_profile(reliable=True, depth=5)]
    writer = bag_io.open_writer(out, storage)
    try:
        raw = writer.add_connection(IMAGE_TOPIC, bag_io.IMAGE, typestore=ts,
                                    offered_qos_profiles=camera_qos)
        comp = writer.add_connection(COMPRESSED_TOPIC, bag_io.COMPRESSED_IMAGE, typestore=ts,
                                     offered_qos_profiles=camera_qos)
        info = writer.add_connection(INFO_TOPIC, "sensor_msgs/msg/CameraInfo", typestore=ts,
                                     offered_qos_profiles=camera_qos)
        prompts = writer.add_connection(bag_io.PROMPTS_TOPIC, bag_io.STRING, typestore=ts,
                                        offered_qos_profiles=[bag_io.qos_profile(depth=1)])
        stamps: list[int] = []
        log_times: list[int] = []
        prompt_time = 0
        for i in range(frames):
            # A driver's clock: 10 Hz with +-3 ms of jitter; logged 4-9 ms later.
            stamp = START_NS + i * PERIOD_NS + int(rng.integers(-3_000_000, 3_000_001))
            latency = int(rng.integers(4_000_000, 9_000_001))
            header = bag_io.header_msg(ts, stamp, FRAME_ID)
            bgr = render_frame(i, rng)
            msg = bag_io.image_msg(ts, header, bgr, "bgr8")
            writer.write(raw, stamp + latency, ts.serialize_cdr(msg, bag_io.IMAGE))
            ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            assert ok
            cmsg = ts.types[bag_io.COMPRESSED_IMAGE](
                header=header, format="bgr8; jpeg compressed bgr8",
                data=np.frombuffer(jpeg.tobytes(), np.uint8))
            # Compression takes a moment: the compressed copy is logged later.
            writer.write(comp, stamp + latency + 2_000_000,
                         ts.serialize_cdr(cmsg, bag_io.COMPRESSED_IMAGE))
            writer.write(info, stamp + latency + 1_000_000,
                         ts.serialize_cdr(camera_info_msg(ts, header),
                                          "sensor_msgs/msg/CameraInfo"))
            stamps.append(stamp)
            log_times.append(stamp + latency)
            if i == PROMPT_AFTER_FRAME:
                # Halfway between this frame and the next: an operator's command.
                prompt_time = START_NS + i * PERIOD_NS + PERIOD_NS // 2
                smsg = ts.types[bag_io.STRING](data=BAG_PROMPT_TEXT)
                writer.write(prompts, prompt_time, ts.serialize_cdr(smsg, bag_io.STRING))
    except BaseException:
        writer.close()
        raise
    writer.close()
    return SampleInfo(path=out, frames=frames, stamps_ns=stamps, log_times_ns=log_times,
                      prompt_log_time_ns=prompt_time, prompt_text=BAG_PROMPT_TEXT,
                      first_frame_after_prompt=PROMPT_AFTER_FRAME + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="bag directory to create")
    parser.add_argument("--storage", choices=bag_io.STORAGES, default="mcap")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT when it exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        info = write_sample_bag(args.out, args.storage, args.frames, args.overwrite)
    except bag_io.BagError as e:
        print(f"make_sample_bag: {e}", file=sys.stderr)
        return 2
    log.info("wrote %s (%s): %d frames on %s and %s, prompts %r after frame %d",
             info.path, args.storage, info.frames, IMAGE_TOPIC, COMPRESSED_TOPIC,
             info.prompt_text, PROMPT_AFTER_FRAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())

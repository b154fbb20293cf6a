"""What the cass_fleet tests share: test bags built from the sample scene,
a local Ray on two CPUs, and comparisons of output bags message by message."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from bag_harness import read_bag
from frame_agreement import (PROB_ATOL, assert_label_images_agree, assert_objects_agree,
                             assert_overlays_agree)

from cass_ros.bag import io as bag_io

RAW = "/camera/image_raw"


def start_ray() -> Path:
    """A local Ray of two CPUs, as the tests' machine has (README: cass_fleet),
    its session folders in a new temporary folder (not /tmp/ray): returned,
    for the caller to remove after ``ray.shutdown()``."""
    import ray

    temp = Path(tempfile.mkdtemp(prefix="cf_ray_", dir="/tmp"))  # short: Ray's sockets
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 1024 * 1024, logging_level="ERROR", _temp_dir=str(temp))
    return temp


def sample_frames(source: Path) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """(raw frames, camera_info messages) of a sample bag: (bag time, CDR)."""
    with bag_io.open_input_bag(source) as bag:
        frames, infos = [], []
        for conn, t_ns, raw in bag.messages(bag.connections):
            if conn.topic == RAW:
                frames.append((t_ns, bytes(raw)))
            elif conn.topic == "/camera/camera_info":
                infos.append((t_ns, bytes(raw)))
    return frames, infos


def write_variant(source: Path, dst: Path, *, cameras: tuple[str, ...] = ("camera",),
                  frames: int = 4, prompt_text: str = "", prompt_after: int = -1,
                  storage: str = "mcap", with_info: bool = True) -> Path:
    """A bag of the sample scene's first ``frames`` raw frames on
    /<camera>/image_raw for each camera (and their camera_info), with a
    /cass/prompts message ``prompt_text`` between frame ``prompt_after`` and
    the next one."""
    raw_frames, infos = sample_frames(source)
    ts = bag_io.make_typestore()
    writer = bag_io.open_writer(dst, storage)
    try:
        images = [writer.add_connection(f"/{c}/image_raw", bag_io.IMAGE, typestore=ts)
                  for c in cameras]
        info = [writer.add_connection(f"/{c}/camera_info", "sensor_msgs/msg/CameraInfo",
                                      typestore=ts) for c in cameras] if with_info else []
        prompts = writer.add_connection(bag_io.PROMPTS_TOPIC, bag_io.STRING, typestore=ts)
        for i, (t_ns, raw) in enumerate(raw_frames[:frames]):
            for k, conn in enumerate(images):
                writer.write(conn, t_ns + k * 1000, raw)
            for k, conn in enumerate(info):
                writer.write(conn, infos[i][0] + k * 1000, infos[i][1])
            if i == prompt_after:
                msg = ts.types[bag_io.STRING](data=prompt_text)
                writer.write(prompts, t_ns + 50_000_000, ts.serialize_cdr(msg, bag_io.STRING))
    finally:
        writer.close()
    return dst


def cut_copy(src: Path, dst: Path, fraction: float = 0.7) -> Path:
    """What a crash leaves: the .mcap cut short, no metadata.yaml."""
    shutil.copytree(src, dst)
    (mcap,) = dst.glob("*.mcap")
    with open(mcap, "r+b") as f:
        f.truncate(int(mcap.stat().st_size * fraction))
    (dst / "metadata.yaml").unlink()
    return dst


def plain(x: Any, skip: tuple[str, ...] = ("inference_ms",)) -> Any:
    """A message as comparable values; ``skip``: fields that time the run."""
    if dataclasses.is_dataclass(x):
        return {f.name: plain(getattr(x, f.name), skip) for f in dataclasses.fields(x)
                if f.name not in skip}
    if isinstance(x, np.ndarray):
        return (x.dtype.str, x.shape, x.tobytes())
    if isinstance(x, (list, tuple)):
        return [plain(v, skip) for v in x]
    return x


def assert_close(a: Any, b: Any, where: Any, atol: float = PROB_ATOL) -> None:
    """``plain`` values equal, but floats (probabilities, presence, scores)
    to within ``atol``: the rounding of two processes' kernels."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_close(a[k], b[k], (where, k), atol)
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, (where, i), atol)
    elif isinstance(a, tuple) and a[0][1] == "f":   # a float array: (dtype, shape, bytes)
        assert a[:2] == b[:2], where
        np.testing.assert_allclose(np.frombuffer(a[2], a[0]), np.frombuffer(b[2], b[0]),
                                   rtol=0, atol=atol, err_msg=str(where))
    elif isinstance(a, float):
        assert abs(a - b) <= atol, (where, a, b)
    else:
        assert a == b, where


def labels_equal(a: Path, b: Path) -> bool:
    """Whether two output bags' label images are all equal."""
    got, want = read_bag(a), read_bag(b)
    return all(np.array_equal(bag_io.image_array(x), bag_io.image_array(y))
               for topic in want if topic.endswith("/segmentation")
               for (_, x), (_, y) in zip(got[topic], want[topic], strict=True))


def assert_same_bag(a: Path, b: Path) -> int:
    """The same topics, and on each the same messages at the same bag times;
    the colour tables beside them the same. Returns the messages compared.

    The two runs ran in other processes (Ray workers, chunks, the driver),
    with kernels and thread pools of their own: label images, overlays and
    objects are compared with the agreement rule (frame_agreement). Every
    message is compared whole (floats to within their rounding) where the
    label images are all equal, and by header where a near-tied pixel
    flipped."""
    got, want = read_bag(a), read_bag(b)
    assert sorted(got) == sorted(want)
    for topic in want:
        assert [t for t, _ in got[topic]] == [t for t, _ in want[topic]], topic
    exact = True
    for cam in {t.split("/")[2] for t in want if t.endswith("/segmentation")}:
        labels = [[m for _, m in x[f"/cass/{cam}/segmentation"]] for x in (got, want)]
        exact &= all(assert_label_images_agree(*labels))
        for i, pair in enumerate(zip(*labels)):
            if f"/cass/{cam}/objects" in want:
                assert_objects_agree(got[f"/cass/{cam}/objects"][i][1],
                                     want[f"/cass/{cam}/objects"][i][1], *pair)
            if f"/cass/{cam}/segmentation/color" in want:
                assert_overlays_agree(*pair, got[f"/cass/{cam}/segmentation/color"][i][1],
                                      want[f"/cass/{cam}/segmentation/color"][i][1])
    n = 0
    for topic in want:
        for (t, m_a), (_, m_b) in zip(got[topic], want[topic]):
            if exact:
                assert_close(plain(m_a), plain(m_b), (topic, t))
            elif hasattr(m_b, "header"):
                assert plain(m_a.header) == plain(m_b.header), topic
            n += 1
    tables = sorted(p.name for p in b.glob("color_table*.csv"))
    assert tables and tables == sorted(p.name for p in a.glob("color_table*.csv"))
    for name in tables:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    return n


def bag_order(path: Path) -> list[tuple[str, int]]:
    """(topic, bag time) of every message, in the order a reader yields them."""
    from rosbags.rosbag2 import Reader

    with Reader(path) as reader:
        return [(c.topic, t) for c, t, _ in reader.messages()]

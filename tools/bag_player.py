"""Play a rosbag2 into a running cass_node over DDS and record its outputs.

What ``ros2 bag play`` + ``ros2 bag record`` do, for the places where the
ros2 CLI and rosbag2_py are not installed (PyPI-wheel set-ups), in the one
shape the test harness and the demo need:

- ``NodeProcess`` starts ``cass_node`` as a subprocess with a parameters
  file and stops it with SIGINT (as Ctrl-C would).
- ``BagPlayer`` is an rclpy node in its own context and domain. It publishes
  the bag's serialized messages unchanged (header stamps and frame ids as
  recorded), at the bag's pace times ``rate``, as fast as possible
  (``rate=0``) or in lock-step (each frame waits for the node's output, so a
  slow CPU still sees every frame); and it records every output topic as
  serialized CDR, which is what a bag stores.

Reading and writing the bags is rosbags' job (cass_ros.bag.io); rclpy's CDR
bytes and rosbags' are the same, so messages pass through unchanged.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import math
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosbags.interfaces import Connection, QosDurability, QosReliability
from rosbags.rosbag2 import Reader
from tqdm import tqdm

from cass_ros.bag import io as bag_io

# rclpy is imported where a player runs, not here: NodeProcess, Recording
# (and writing it as a bag) and header_stamp work without a ROS install.

log = logging.getLogger(__name__)


class PlayerError(RuntimeError):
    """The node did not start, did not answer, or the bag cannot be played."""


# ---------------------------------------------------------------------------
# The node as a subprocess

def node_command() -> list[str]:
    """How to start cass_node: the installed executable of a colcon install
    tree (``<prefix>/lib/cass_ros/cass_node``), else ``python -m cass_ros.ros.wiring.node``."""
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        exe = Path(prefix) / "lib" / "cass_ros" / "cass_node"
        if prefix and exe.is_file() and os.access(exe, os.X_OK):
            return [str(exe)]
    return [sys.executable, "-m", "cass_ros.ros.wiring.node"]


def free_domain_id() -> int:
    """A ROS domain id for one test run or demo, away from the default 0 so
    that other ROS programs on the machine neither see nor disturb it."""
    if os.environ.get("CASS_ROS_TEST_DOMAIN_ID"):
        return int(os.environ["CASS_ROS_TEST_DOMAIN_ID"])
    return 101 + (os.getpid() % 100)  # 101..200: apart from node_harness's 1..100


@dataclass
class NodeProcess:
    """cass_node in a subprocess, its output in ``log_path``."""

    params_file: Path | None
    log_path: Path
    domain_id: int
    parameters: dict[str, Any] = field(default_factory=dict)  # -p name:=value
    command: list[str] = field(default_factory=node_command)
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        args = list(self.command) + ["--ros-args"]
        if self.params_file is not None:
            args += ["--params-file", str(self.params_file)]
        for name, value in self.parameters.items():
            args += ["-p", f"{name}:={_param_text(value)}"]
        env = dict(os.environ, ROS_DOMAIN_ID=str(self.domain_id),
                   ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1",
                   RCUTILS_LOGGING_BUFFERED_STREAM="0")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "wb")  # noqa: SIM115 - owned by the child until it ends
        log.info("starting %s", " ".join(args))
        try:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            out.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def failure(self) -> str:
        """Why the node ended: its last log lines."""
        lines = [ln for ln in self.log_text().splitlines() if ln.strip()]
        code = self.proc.returncode if self.proc else None
        return f"cass_node exited with {code}: " + (" | ".join(lines[-3:]) or "(no output)")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGINT (a clean shutdown), then SIGTERM, then SIGKILL; only this
        process, by its id."""
        if self.proc is None:
            return None
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.poll()


def _die_with_parent() -> None:
    """In the child: end with the parent (Linux PR_SET_PDEATHSIG), so a
    killed test run or demo leaves no node behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _param_text(value: Any) -> str:
    """A value for ``-p name:=value`` (YAML syntax, as ros2 run takes it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_quote(v) for v in value) + "]"
    return _quote(value) if isinstance(value, str) else str(value)


def _quote(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


# ---------------------------------------------------------------------------
# Recording

@dataclass
class Received:
    topic: str
    msgtype: str
    time_ns: int         # monotonic receive time
    data: bytes          # serialized CDR


@dataclass
class Published:
    topic: str
    msgtype: str
    time_ns: int         # monotonic publish time
    bag_time_ns: int
    stamp_ns: int | None  # header stamp of images, None for other messages


@dataclass
class Recording:
    """What one play produced: every received output message and every
    published input, in order."""

    received: list[Received] = field(default_factory=list)
    published: list[Published] = field(default_factory=list)
    missed_frames: list[int] = field(default_factory=list)  # lock-step timeouts (stamps)

    def messages(self, topic: str) -> list[Any]:
        """The topic's messages as rosbags dataclasses, in arrival order."""
        ts = bag_io.make_typestore()
        return [ts.deserialize_cdr(r.data, r.msgtype) for r in self.received if r.topic == topic]

    def write_bag(self, path: str | os.PathLike, storage: str = "mcap",
                  overwrite: bool = False, bag_times: dict[int, int] | None = None) -> Path:
        """The recording as a rosbag2. ``bag_times`` maps header stamps to bag
        times, so outputs line up with the input bag; else receive times
        (converted to the wall clock) are used."""
        ts = bag_io.make_typestore()
        out = bag_io.prepare_output_path(path, overwrite)
        writer = bag_io.open_writer(out, storage)
        offset = time.time_ns() - time.monotonic_ns()
        try:
            conns: dict[str, Any] = {}
            for r in self.received:
                if r.topic not in conns:
                    latched = r.topic == bag_io.CLASSES_TOPIC
                    qos = [bag_io.qos_profile(transient_local=latched, depth=1 if latched else 10)]
                    conns[r.topic] = writer.add_connection(r.topic, r.msgtype, typestore=ts,
                                                           offered_qos_profiles=qos)
                t = r.time_ns + offset
                if bag_times is not None and r.msgtype in (bag_io.IMAGE, bag_io.OBJECTS):
                    stamp = bag_io.stamp_ns(ts.deserialize_cdr(r.data, r.msgtype).header.stamp)
                    t = bag_times.get(stamp, t)
                writer.write(conns[r.topic], t, r.data)
        finally:
            writer.close()
        return out


# ---------------------------------------------------------------------------
# The player

def _message_class(msgtype: str) -> Any:
    """The rclpy class of ``pkg/msg/Name``."""
    pkg, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


def _rclpy_qos(reliable: bool = True, transient_local: bool = False, depth: int = 10) -> Any:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient_local
        else DurabilityPolicy.VOLATILE)


def _qos_from_bag(conn: Connection) -> Any:
    """The publisher QoS of a bag topic: what was offered when it was
    recorded (as ros2 bag play does), reliable volatile when unknown."""
    profiles = list(getattr(conn.ext, "offered_qos_profiles", []) or [])
    if not profiles:
        return _rclpy_qos()
    p = profiles[0]
    return _rclpy_qos(reliable=p.reliability != QosReliability.BEST_EFFORT,
                      transient_local=p.durability == QosDurability.TRANSIENT_LOCAL,
                      depth=max(1, int(p.depth or 10)))


class _BagClock:
    """Real-time pacing: bag time runs ``rate`` times faster than the wall clock."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.t0_wall = time.monotonic_ns()
        self.t0_bag: int | None = None

    def wait_until(self, t_bag: int) -> None:
        if self.t0_bag is None:
            self.t0_bag = t_bag
        delay = (self.t0_wall + (t_bag - self.t0_bag) / self.rate - time.monotonic_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)


class BagPlayer:
    """An rclpy node that plays bags and records topics (see module doc).

    Use as a context manager; ``record`` before ``play``.
    """

    def __init__(self, domain_id: int, name: str = "cass_bag_player") -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        self._ctx = Context()
        # No rclpy signal handlers: Ctrl-C stays a KeyboardInterrupt of the caller.
        rclpy.init(context=self._ctx, domain_id=domain_id,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, context=self._ctx)
        self._executor = MultiThreadedExecutor(num_threads=2, context=self._ctx)
        self._executor.add_node(self.node)
        self._cond = threading.Condition()
        self.recording = Recording()
        self._subs: dict[str, Any] = {}
        self._pubs: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._spin, name="bag_player", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        # spin() raises once the context is shut down: that is the normal end.
        with contextlib.suppress(Exception):
            self._executor.spin()

    def close(self) -> None:
        import rclpy

        self._executor.shutdown(timeout_sec=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self._ctx)
        self._thread.join(timeout=5.0)

    def __enter__(self) -> "BagPlayer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ recording

    def record(self, topics: dict[str, str]) -> None:
        """Subscribe to ``{topic: msgtype}``; messages go to ``recording``
        as serialized bytes. /cass/classes is latched: subscribed transient
        local, so the table in force arrives too."""
        for topic, msgtype in topics.items():
            if topic in self._subs:
                continue
            latched = topic == bag_io.CLASSES_TOPIC
            qos = _rclpy_qos(transient_local=latched, depth=10 if latched else 200)

            def callback(data: bytes, topic: str = topic, msgtype: str = msgtype) -> None:
                item = Received(topic, msgtype, time.monotonic_ns(), bytes(data))
                with self._cond:
                    self.recording.received.append(item)
                    self._cond.notify_all()

            self._subs[topic] = self.node.create_subscription(
                _message_class(msgtype), topic, callback, qos, raw=True)

    def node_output_topics(self, cameras: Iterable[str]) -> dict[str, str]:
        """The output topics of cass_node for these camera names."""
        topics = {bag_io.CLASSES_TOPIC: bag_io.CLASS_TABLE}
        for cam in cameras:
            names = bag_io.output_topics(cam)
            topics[names["labels"]] = bag_io.IMAGE
            topics[names["color"]] = bag_io.IMAGE
            topics[names["objects"]] = bag_io.OBJECTS
        return topics

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        """Wait until ``predicate(recording)`` holds; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.recording):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def wait_ready(self, node: NodeProcess | None, input_topics: Sequence[str],
                   timeout: float = 120.0) -> None:
        """Until the node has announced its classes, its publishers match our
        subscriptions and our publishers on ``input_topics`` match its
        subscriptions: only then are no frames lost to discovery."""
        deadline = time.monotonic() + timeout

        def check_alive() -> None:
            if node is not None and not node.running():
                raise PlayerError(node.failure())

        def matched() -> bool:
            subs_ok = all(s.get_publisher_count() > 0 for s in self._subs.values())
            pubs_ok = all(self._publisher(t).get_subscription_count() > 0 for t in input_topics)
            return subs_ok and pubs_ok

        while True:
            check_alive()
            have_table = any(r.topic == bag_io.CLASSES_TOPIC for r in self.recording.received)
            if have_table and matched():
                return
            if time.monotonic() > deadline:
                raise PlayerError(f"cass_node did not become ready within {timeout:.0f} s "
                                  f"(classes announced: {have_table}, topics matched: "
                                  f"{matched()})")
            time.sleep(0.1)

    # ------------------------------------------------------------ playing

    def _publisher(self, topic: str, msgtype: str | None = None, qos: Any = None) -> Any:
        pub = self._pubs.get(topic)
        if pub is None:
            if msgtype is None:
                raise PlayerError(f"no publisher for {topic}")
            pub = self.node.create_publisher(_message_class(msgtype), topic, qos or _rclpy_qos())
            self._pubs[topic] = pub
        return pub

    def advertise(self, bag: str | os.PathLike, topics: Sequence[str] | None = None,
                  remap: dict[str, str] | None = None) -> list[str]:
        """Create the publishers for a bag's topics (before ``wait_ready``);
        returns the topic names as published."""
        remap = remap or {}
        with Reader(Path(bag)) as reader:
            conns = _select(reader.connections, topics)
            for c in conns:
                self._publisher(remap.get(c.topic, c.topic), c.msgtype, _qos_from_bag(c))
            return [remap.get(c.topic, c.topic) for c in conns]

    def play(self, bag: str | os.PathLike, topics: Sequence[str] | None = None, *,
             rate: float = 1.0, lockstep: bool = False, remap: dict[str, str] | None = None,
             frame_timeout: float = 60.0, prompt_timeout: float = 30.0,
             node: NodeProcess | None = None, progress: bool = False) -> Recording:
        """Publish the bag's messages (all topics, or ``topics``) in bag-time
        order; return the recording (also kept in ``self.recording``).

        ``rate``: bag time runs ``rate`` times faster than the wall clock;
        0 or infinity: no waiting at all. ``lockstep``: after each image on
        a topic someone subscribes to, wait for an ObjectPresenceArray with
        its stamp (``frame_timeout``); after each /cass/prompts message,
        wait for the ClassTable it causes (``prompt_timeout``).
        """
        ts = bag_io.make_typestore()
        remap = remap or {}
        fast = rate <= 0 or math.isinf(rate)
        with Reader(Path(bag)) as reader:
            conns = _select(reader.connections, topics)
            for c in conns:
                self._publisher(remap.get(c.topic, c.topic), c.msgtype, _qos_from_bag(c))
            bar = tqdm(total=sum(c.msgcount for c in conns), unit="msg", desc="playing",
                       disable=not progress)
            clock = _BagClock(rate) if not (fast or lockstep) else None
            for conn, t_bag, raw in reader.messages(connections=conns):
                if node is not None and not node.running():
                    raise PlayerError(node.failure())
                if clock is not None:
                    clock.wait_until(t_bag)
                topic = remap.get(conn.topic, conn.topic)
                pub = self._publisher(topic)
                stamp = None
                if conn.msgtype in bag_io.IMAGE_TYPES:
                    stamp = bag_io.stamp_ns(ts.deserialize_cdr(raw, conn.msgtype).header.stamp)
                tables_before = self._count(bag_io.CLASSES_TOPIC)
                pub.publish(bytes(raw))
                with self._cond:
                    self.recording.published.append(
                        Published(topic, conn.msgtype, time.monotonic_ns(), t_bag, stamp))
                bar.update(1)
                if not lockstep or pub.get_subscription_count() == 0:
                    continue
                if stamp is not None:
                    self._wait_frame_outputs(stamp, frame_timeout)
                elif topic.endswith(bag_io.PROMPTS_TOPIC) and conn.msgtype == bag_io.STRING:
                    self._wait_class_table(tables_before, prompt_timeout)
            bar.close()
        return self.recording

    def _count(self, topic: str) -> int:
        return sum(r.topic == topic for r in self.recording.received)

    def _wait_frame_outputs(self, stamp: int, timeout: float) -> None:
        """Lock-step: all of the frame's outputs, not only its objects: a
        newer frame would push a label image that is still being re-sent out
        of the node's (keep last 2) writer history."""
        found: list[str] = []
        ok = self.wait_for(lambda rec, f=found: _objects_topic(rec, stamp, f), timeout)
        if ok:
            base = found[0].rsplit("/", 1)[0]
            siblings = [t for t in (f"{base}/segmentation", f"{base}/segmentation/color",
                                    f"{base}/instances", f"{base}/instance_objects",
                                    f"{base}/features")
                        if t in self._subs]
            ok = self.wait_for(lambda rec: all(_has_stamp(rec, t, stamp) for t in siblings),
                               timeout)
        if not ok:
            log.warning("no output for the frame stamped %s within %.0f s",
                        bag_io.stamp_text(stamp), timeout)
            self.recording.missed_frames.append(stamp)

    def _wait_class_table(self, tables_before: int, timeout: float) -> None:
        """Lock-step: the node applies a prompt from the next frame once it is
        encoded; the next frame waits for the class table it announces."""
        ok = self.wait_for(lambda rec: sum(r.topic == bag_io.CLASSES_TOPIC
                                           for r in rec.received) > tables_before, timeout)
        if not ok:
            log.warning("no new class table within %.0f s after the prompt "
                        "message (rejected or unchanged?)", timeout)

    def settle(self, quiet_s: float = 1.0, timeout: float = 60.0, prefix: str = "/cass/") -> None:
        """Wait until no message on a topic under ``prefix`` has arrived for
        ``quiet_s`` (the node is done); periodic topics such as /diagnostics
        do not count."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                last = max((r.time_ns for r in self.recording.received
                            if r.topic.startswith(prefix)), default=0)
            if (time.monotonic_ns() - last) / 1e9 >= quiet_s:
                return
            time.sleep(0.05)


def _select(connections: Sequence[Connection], topics: Sequence[str] | None
            ) -> list[Connection]:
    if not topics:
        return list(connections)
    have = {c.topic for c in connections}
    missing = [t for t in topics if t not in have]
    if missing:
        raise PlayerError(f"topic(s) {', '.join(missing)} not in the bag; it has "
                          f"{', '.join(sorted(have))}")
    return [c for c in connections if c.topic in set(topics)]


def header_stamp(data: bytes) -> int | None:
    """The header stamp of a serialized message that starts with a
    std_msgs/Header (Image, ObjectPresenceArray): the first field after
    the 4-byte encapsulation header; data[1] is 1 for little endian."""
    if len(data) < 12:
        return None
    sec, nsec = struct.unpack_from("<iI" if data[1] == 1 else ">iI", data, 4)
    return sec * 1_000_000_000 + nsec


def _has_stamp(rec: Recording, topic: str, stamp: int) -> bool:
    return any(r.topic == topic and header_stamp(r.data) == stamp
               for r in reversed(rec.received))


def _objects_topic(rec: Recording, stamp: int, found: list[str]) -> bool:
    """Whether an ObjectPresenceArray with this stamp arrived; its topic
    goes to ``found``."""
    for r in reversed(rec.received):
        if r.msgtype == bag_io.OBJECTS and header_stamp(r.data) == stamp:
            found[:] = [r.topic]
            return True
    return False

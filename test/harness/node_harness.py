"""Node test fixtures (a pytest plugin: test/conftest.py lists it in
``pytest_plugins``): an isolated DDS domain, an rclpy context with a test
node spinning in the background, tiny random checkpoints, and helpers to
start cass_node the way users do.

Isolation: other test sessions may run on this machine at the same time, so
the session picks its own ROS_DOMAIN_ID (and the nodes get a unique
namespace); subprocesses inherit the environment.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "cass.yaml"


def _pick_domain() -> int:
    # 1..100 keeps the DDS ports of every participant in range; random with
    # the pid so two sessions started together rarely collide.
    return random.Random(os.getpid() ^ int(time.time())).randint(1, 100)


@pytest.fixture(scope="session")
def ros_domain() -> int:
    domain = int(os.environ.get("CASS_TEST_DOMAIN_ID", 0)) or _pick_domain()
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    # Jazzy and Kilted's setting; not Humble's ROS_LOCALHOST_ONLY, on which
    # Jazzy's rcl warns in every process (the ros2 commands' stderr too).
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    return domain


def ros_available() -> str | None:
    """None when rclpy and the built messages import, else the reason."""
    try:
        import rclpy  # noqa: F401

        from cass_ros.msg import ObjectPresenceArray  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return (f"ROS 2 / the built cass_ros messages are not importable ({e}); run "
                "`make build`, then `export AMENT_PREFIX_PATH=$PWD/.venv; source install/setup.bash`")
    return None


class Harness:
    """A test node in its own rclpy context, spinning in a thread; records
    every message of the topics it subscribes to."""

    def __init__(self, domain: int, namespace: str) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import MultiThreadedExecutor

        self.namespace = namespace
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("cass_test", namespace=namespace, context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self.messages: dict[str, list[Any]] = defaultdict(list)
        self._lock = threading.Lock()
        self.spin_error: Exception | None = None
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        """The executor's spin, surviving what tests do from their own
        thread. A publisher or subscription destroyed there while the
        executor waits on it (a publisher's QoS event handler is a waitable)
        makes rclpy raise InvalidHandle here; rclpy's own spin() then ends,
        and the harness would silently stop recording (seen as a class
        table that never arrived in a full run). The wait is retried instead:
        the destroyed entity is gone from the next wait set."""
        from rclpy.executors import ExternalShutdownException

        while self.context.ok() and not self._closing.is_set():
            try:
                self.executor.spin_once()
            except ExternalShutdownException:
                return
            except Exception as e:  # noqa: BLE001
                if self._closing.is_set() or not self.context.ok():
                    return              # the executor ends with the context: shutdown noise
                if type(e).__name__ != "InvalidHandle":
                    self.spin_error = e     # said by got(): no silent deafness
                    return

    def topic(self, name: str) -> str:
        """Absolute name of ``name`` in the test namespace."""
        return name if name.startswith("/") else f"{self.namespace}/{name}"

    def subscribe(self, msg_type: Any, name: str, qos: Any = None, key: str | None = None) -> Any:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        key = key or self.topic(name)
        qos = qos or QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)

        def store(msg: Any) -> None:
            with self._lock:
                self.messages[key].append(msg)

        return self.node.create_subscription(msg_type, self.topic(name), store, qos)

    def latched_qos(self) -> Any:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL)

    def got(self, key: str) -> list[Any]:
        if self.spin_error is not None:
            raise AssertionError(f"the test node stopped spinning: {self.spin_error!r}")
        with self._lock:
            return list(self.messages[self.topic(key)])

    def clear(self, key: str | None = None) -> None:
        with self._lock:
            if key is None:
                self.messages.clear()
            else:
                self.messages[self.topic(key)].clear()

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0,
                 what: str = "condition", poll: float = 0.05) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = predicate()
            if value:
                return value
            time.sleep(poll)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def wait_message(self, key: str, match: Callable[[Any], bool] = lambda m: True,
                     timeout: float = 30.0) -> Any:
        def find() -> Any:
            for m in self.got(key):
                if match(m):
                    return m
            return None

        return self.wait_for(find, timeout, f"a matching message on {self.topic(key)}")

    def wait_subscribers(self, publisher: Any, count: int = 1, timeout: float = 20.0) -> None:
        self.wait_for(lambda: publisher.get_subscription_count() >= count, timeout,
                      f"{count} subscriber(s) of {publisher.topic_name}")

    def close(self) -> None:
        import rclpy

        self._closing.set()
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)


def image_msg(rgb: Any, stamp_ns: int, frame_id: str, encoding: str = "rgb8",
              step_padding: int = 0) -> Any:
    from std_msgs.msg import Header

    from cass_ros.ros.outputs.messages import image_from_rgb

    header = Header()
    header.frame_id = frame_id
    header.stamp.sec, header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return image_from_rgb(rgb, encoding, header, step_padding)


def stamp_ns(header: Any) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def node_executable(name: str = "cass_node") -> str:
    """The installed cass_node script (what `ros2 run cass_ros cass_node` runs),
    or another of the package's executables."""
    from ament_index_python.packages import get_package_prefix

    return str(Path(get_package_prefix("cass_ros")) / "lib" / "cass_ros" / name)


def start_node(extra_args: list[str], log_path: Path, params_file: Path = CONFIG,
               ignore_sigint: bool = False, executable: str = "cass_node") -> subprocess.Popen:
    """``cass_node --ros-args --params-file config/cass.yaml <extra_args>`` as
    a subprocess, output to ``log_path``. ``ignore_sigint``: started with
    SIGINT set to SIG_IGN, as the shell starts a background job of a script."""
    import signal

    def ignore() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    cmd = [node_executable(executable), "--ros-args", "--params-file", str(params_file), *extra_args]
    log = open(log_path, "wb")  # noqa: SIM115 - closed by stop_node
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
                            preexec_fn=ignore if ignore_sigint else None)
    proc._cass_log = log  # type: ignore[attr-defined]
    return proc


def stop_node(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    log = getattr(proc, "_cass_log", None)
    if log is not None:
        log.close()
    return proc.returncode


def wait_log(proc: subprocess.Popen, log_path: Path, text: str, timeout: float = 120.0) -> str:
    """Until ``text`` is in the node's log; the log so far. Fails when the
    node exits first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        log = log_path.read_text(errors="replace")
        if text in log:
            return log
        if proc.poll() is not None:
            raise AssertionError(f"the node exited ({proc.returncode}) before logging "
                                 f"{text!r}:\n{log[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"no {text!r} in the node's log within {timeout:.0f} s")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def unique_namespace(prefix: str) -> str:
    return f"/{prefix}_{os.getpid()}_{random.randint(0, 99999)}"


__all__ = ["Harness", "image_msg", "stamp_ns", "node_executable", "start_node", "stop_node",
           "wait_log",
           "rss_kib", "unique_namespace", "ros_available", "CONFIG", "REPO", "sys"]

"""cass_node: the live ROS 2 node around cass_ros.core.Segmenter.

The node only adapts the segmenter's API (docs/ros-interface.md):

- subscription callbacks store the newest frame per camera and return
  (an unprocessed older frame is dropped and counted);
- one inference thread takes every frame that is ready, converts them,
  runs them through the segmenter in one call (cameras share the model),
  and publishes labels, objects and (when wanted) the colour overlay;
- prompt changes (topic or parameters) are validated at once, encoded on a
  separate thread, and swapped in as one immutable PreparedPrompts
  between frames; /cass/classes (latched) announces each accepted set;
- a timer publishes /diagnostics and logs a summary line.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rclpy.node import Node

from . import params as node_params
from ..core.config import CassConfig, ConfigError
from .image_conversion import ImageConversionError, cv_bridge_available, to_rgb
from ..core.prompts import PromptError, PromptSet, parse_prompt_text
from .messages import class_table_msg, color_image_msg, label_image_msg, objects_msg
from ..core.visualize import overlay, palette

NODE_NAME = "cass_node"
DIAG_PERIOD_S = 1.0        # /diagnostics
SUMMARY_PERIOD_S = 5.0     # the summary line in the log
STATS_WINDOW_S = 5.0       # rate and latency are averaged over this window
STALE_AFTER_S = 5.0        # a camera without images this long is reported WARN


class StartupError(RuntimeError):
    """The node cannot start; the message is one line naming the parameter."""


@dataclass
class _Active:
    """The segmenter and prompt set in force: swapped as a whole (one
    attribute write), so a frame never mixes two configurations."""

    prompt_id: int
    prompt_set: PromptSet
    prepared: Any               # segmenter.PreparedPrompts
    colors: Any                 # (K, 3) uint8 palette
    segmenter: Any              # segmenter.Segmenter


@dataclass
class _Camera:
    index: int
    name: str
    topic: str
    pub_labels: Any = None
    pub_color: Any = None
    pub_objects: Any = None
    subscription: Any = None
    pending: tuple[Any, float] | None = None   # (message, receive time)
    last_accepted: float = -1e9
    # counters (written under the node's lock or by the inference thread)
    received: int = 0
    processed: int = 0
    dropped: int = 0          # replaced by a newer frame before inference took it
    missed: int = 0           # never reached the callback (gaps in the publishers'
                              # sequence numbers: DDS kept only the newest, or lost it)
    last_seq: dict = field(default_factory=dict)   # publisher gid -> sequence number
    throttled: int = 0        # skipped for max_rate_hz
    rejected: int = 0         # unusable frames (encoding, size, data)
    failed: int = 0           # inference raised
    overlays: int = 0         # colour overlays computed
    last_image: float = 0.0
    window: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1000))


class _RosLogHandler(logging.Handler):
    """Python logging of the cass_ros library (segmenter, models) into the
    node's ROS logger, so users see e.g. the random-weights warning."""

    def __init__(self, logger: Any) -> None:
        super().__init__(logging.INFO)
        self._logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.levelno >= logging.ERROR:
                self._logger.error(text)
            elif record.levelno >= logging.WARNING:
                self._logger.warning(text)
            else:
                self._logger.info(text)
        except Exception:  # noqa: BLE001 - logging must never raise
            pass


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class CassNode(Node):
    """The CASS segmentation node. Raises StartupError when it cannot start."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._log_handler = _RosLogHandler(self.get_logger())
        lib_log = logging.getLogger("cass_ros")
        lib_log.addHandler(self._log_handler)
        lib_log.setLevel(logging.INFO)
        self._lock = threading.Condition()
        self._stop = False
        self._worker: threading.Thread | None = None
        self._prompt_pool: ThreadPoolExecutor | None = None
        try:
            self._setup()
        except (ConfigError, PromptError) as e:
            self._teardown()
            raise StartupError(_one_line(str(e))) from None
        except StartupError:
            self._teardown()
            raise

    # ------------------------------------------------------------------ setup

    def _setup(self) -> None:
        node_params.declare_all(self)
        values = node_params.read_all(self)
        config, runtime = node_params.settings_from_values(values)
        # Prompts are checked before the models load, so a missing prompt
        # fails in a second, not after the weights are read.
        prompt_set = node_params.check_prompt_set(node_params.prompt_set_from_values(config, {}))
        self.config: CassConfig = config
        self._runtime = runtime
        # The prompt parameters in force (a preset's classes_file included).
        self._prompt_values = {"prompts": list(config.prompts),
                               "classes_file": config.classes_file,
                               "background_classes": list(config.background_classes)}
        preset_changes = node_params.changed_from_preset(config) if config.preset else {}
        if preset_changes:
            self.get_logger().info(f"preset '{config.preset}' sets "
                                   + ", ".join(f"{k}={v!r}" for k, v in preset_changes.items()))

        segmenter = self._load_segmenter(config)
        self.get_logger().info(f"model: {segmenter.describe()}")

        prepared = segmenter.prepare_prompts(prompt_set, prompt_id=1)
        self._active = _Active(1, prompt_set, prepared, palette(prompt_set.num_labels), segmenter)
        self._last_submitted: PromptSet = prompt_set
        self._next_prompt_id = 2

        self._make_interfaces(runtime)
        self._publish_class_table(self._active)
        self._prompt_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cass_prompts")
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._worker = threading.Thread(target=self._inference_loop, name="cass_inference",
                                        daemon=True)
        self._worker.start()
        self._diag_timer = self.create_timer(DIAG_PERIOD_S, self._publish_diagnostics)
        self._last_summary = time.monotonic()
        names = ", ".join(f"{c.topic} -> /cass/{c.name}" for c in self._cameras)
        self.get_logger().info(
            f"ready: {names} ({runtime.image_transport}, {runtime.image_qos}); "
            f"prompt_id 1: {', '.join(prompt_set.class_names[1:])}; image conversion: "
            f"{'cv_bridge' if cv_bridge_available() else 'built-in'}")

    def _load_segmenter(self, config: CassConfig) -> Any:
        from ..core.models import WeightsError
        from ..core.segmenter import Segmenter

        try:
            return Segmenter(config)
        except (ConfigError, WeightsError) as e:
            raise StartupError(_one_line(str(e))) from None
        except Exception as e:  # noqa: BLE001 - one line at start-up, not a traceback
            if os.environ.get("CASS_ROS_DEBUG"):
                raise
            raise StartupError(_one_line(
                f"cannot load the models ({type(e).__name__}: {e}); check 'clip_model', "
                "'clip_weights', 'dino_model', 'dino_weights' and 'device' "
                "(CASS_ROS_DEBUG=1 shows the traceback)")) from None

    def _make_interfaces(self, runtime: node_params.RuntimeParams) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile,
                               ReliabilityPolicy)
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String

        from cass_ros.msg import ClassTable, ObjectPresenceArray

        reliable = ReliabilityPolicy.RELIABLE
        image_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=1, durability=DurabilityPolicy.VOLATILE,
            reliability=reliable if runtime.image_qos == "reliable"
            else ReliabilityPolicy.BEST_EFFORT)
        out_image_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2, reliability=reliable)
        out_objects_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                                     reliability=reliable)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=reliable,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        prompts_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=reliable,
                                 durability=DurabilityPolicy.VOLATILE)

        # Relative names: /cass/... in the root namespace, /<ns>/cass/... in a namespace.
        self._pub_classes = self.create_publisher(ClassTable, "cass/classes", latched)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._sub_prompts = self.create_subscription(String, "cass/prompts", self._on_prompt_text,
                                                     prompts_qos)
        compressed = runtime.image_transport == "compressed"
        # rclpy >= Iron passes MessageInfo (with sequence numbers) to
        # two-argument callbacks; it lets the node count frames that DDS
        # replaced in its keep-last-1 queue before the callback saw them.
        import rclpy.subscription

        with_info = hasattr(rclpy.subscription, "MessageInfo")
        self._cameras: list[_Camera] = []
        for i, (topic, name) in enumerate(zip(runtime.image_topics, runtime.cameras())):
            cam = _Camera(index=i, name=name, topic=topic)
            base = f"cass/{name}"
            cam.pub_labels = self.create_publisher(Image, f"{base}/segmentation", out_image_qos)
            cam.pub_color = self.create_publisher(Image, f"{base}/segmentation/color",
                                                  out_image_qos)
            cam.pub_objects = self.create_publisher(ObjectPresenceArray, f"{base}/objects",
                                                    out_objects_qos)
            msg_type = CompressedImage if compressed else Image
            if compressed:
                cam.topic = topic.rstrip("/") + "/compressed"
            if with_info:
                def callback(m: Any, info: Any, c: _Camera = cam) -> None:
                    self._on_image(m, c, info)
            else:  # Humble: message only
                def callback(m: Any, c: _Camera = cam) -> None:
                    self._on_image(m, c)
            cam.subscription = self.create_subscription(msg_type, cam.topic, callback, image_qos)
            self._cameras.append(cam)

    # ------------------------------------------------------------------ input

    def _on_image(self, msg: Any, cam: _Camera, info: Any = None) -> None:
        now = time.monotonic()
        with self._lock:
            cam.received += 1
            if info:
                self._count_missed(cam, info)
            cam.last_image = now
            rate = self._runtime.max_rate_hz
            if rate > 0 and now - cam.last_accepted < 1.0 / rate:
                cam.throttled += 1
                return
            if cam.pending is not None:
                cam.dropped += 1        # never queue: the newest frame wins
            cam.pending = (msg, now)
            cam.last_accepted = now
            self._lock.notify()

    @staticmethod
    def _count_missed(cam: _Camera, info: Any) -> None:
        seq = info.get("publication_sequence_number")
        gid = info.get("publisher_gid")
        if not seq or not gid:
            return
        key = bytes(gid.get("data", b"")) if isinstance(gid, dict) else bytes(gid)
        last = cam.last_seq.get(key)
        if last is not None and seq > last + 1:
            cam.missed += seq - last - 1
        if last is None or seq > last:
            cam.last_seq[key] = seq
        if len(cam.last_seq) > 64:      # publishers come and go: forget old ones
            cam.last_seq.pop(next(iter(cam.last_seq)))

    # -------------------------------------------------------------- inference

    def _inference_loop(self) -> None:
        while True:
            with self._lock:
                while not self._stop and not any(c.pending for c in self._cameras):
                    self._lock.wait(0.5)
                if self._stop:
                    return
                batch = [(c, *c.pending) for c in self._cameras if c.pending is not None]
                for c in self._cameras:
                    c.pending = None
                active = self._active       # the prompt set for this whole batch
                runtime = self._runtime
            try:
                self._process(batch, active, runtime)
            except Exception as e:  # noqa: BLE001 - the node must keep running
                if self._stop or not self.context.ok():
                    return
                for cam, _, _ in batch:
                    cam.failed += 1
                self.get_logger().error(f"inference failed: {type(e).__name__}: {e}",
                                        throttle_duration_sec=5.0)

    def _process(self, batch: list[tuple[_Camera, Any, float]], active: _Active,
                 runtime: node_params.RuntimeParams) -> None:
        frames = []
        for cam, msg, received in batch:
            try:
                rgb = to_rgb(msg)
            except ImageConversionError as e:
                cam.rejected += 1
                self.get_logger().warning(f"{cam.topic}: frame rejected: {e}",
                                          throttle_duration_sec=5.0)
                continue
            frames.append((cam, msg, received, rgb))
        if not frames:
            return
        t0 = time.perf_counter()
        results = active.segmenter.segment([f[3] for f in frames], prompts=active.prepared,
                                         output_size=runtime.output_size)
        batch_ms = (time.perf_counter() - t0) * 1000.0
        for (cam, msg, received, rgb), result in zip(frames, results):
            result.prompt_id = active.prompt_id
            self._publish_result(cam, msg.header, rgb, result, active, runtime,
                                 float(result.timings_ms.get("total", batch_ms)))
            now = time.monotonic()
            cam.processed += 1
            cam.window.append((now, (now - received) * 1000.0, batch_ms))

    def _publish_result(self, cam: _Camera, header: Any, rgb: Any, result: Any,
                        active: _Active, runtime: node_params.RuntimeParams,
                        inference_ms: float) -> None:
        cam.pub_labels.publish(label_image_msg(result, header))
        cam.pub_objects.publish(objects_msg(result, header, runtime.min_pixels, inference_ms))
        # The overlay costs a full-image blend: only when someone looks.
        if runtime.publish_color or cam.pub_color.get_subscription_count() > 0:
            if rgb.shape[:2] != result.labels.shape:
                from ..core.preprocess import resize_short_side

                rgb = resize_short_side(rgb, active.segmenter.config.short_side)
            cam.overlays += 1
            cam.pub_color.publish(color_image_msg(
                overlay(rgb, result.labels, active.colors, runtime.color_alpha), header))

    # ---------------------------------------------------------------- prompts

    def _on_prompt_text(self, msg: Any) -> None:
        """/cass/prompts: the text becomes the ``prompts`` parameter, so the
        topic and ``ros2 param set`` share one validated path and
        ``ros2 param get prompts`` shows what is in force."""
        try:
            classes = parse_prompt_text(msg.data)
            node_params.check_prompt_set(PromptSet(classes=tuple(classes)))
        except PromptError as e:
            self.get_logger().warning(f"prompt message rejected, keeping prompt_id "
                                      f"{self._active.prompt_id}: {e}")
            return
        from rclpy.parameter import Parameter

        value = ["|".join(names) for names in classes]
        result = self.set_parameters([Parameter("prompts", Parameter.Type.STRING_ARRAY, value)])[0]
        if not result.successful:
            self.get_logger().warning(f"prompt message rejected, keeping prompt_id "
                                      f"{self._active.prompt_id}: {result.reason}")

    def _on_set_parameters(self, params: list[Any]) -> Any:
        from rcl_interfaces.msg import SetParametersResult

        changes = {}
        for p in params:
            spec = node_params.SPECS.get(p.name)
            if spec is None:
                continue
            value = p.value
            if spec.kind == "list":
                value = [] if value is None else [str(v) for v in value]
            changes[p.name] = value
        if not changes:
            return SetParametersResult(successful=True)
        current = dict(dataclasses.asdict(self._runtime), **self._prompt_values)
        try:
            runtime, prompt_set = node_params.check_change(current, changes)
            config = node_params.check_config_change(self.config, changes)
        except (ConfigError, PromptError) as e:
            reason = _one_line(str(e))
            self.get_logger().warning(f"parameter change rejected: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        with self._lock:
            self._runtime = runtime
            for name in node_params.PROMPT_NAMES:
                if name in changes:
                    self._prompt_values[name] = changes[name]
            if config is not None:
                self.config = config    # what later changes are checked against
        if config is not None and self._prompt_pool is not None:
            self._prompt_pool.submit(self._reconfigure, config)
        if prompt_set is not None and prompt_set != self._last_submitted:
            self._last_submitted = prompt_set
            if self._prompt_pool is not None:
                self._prompt_pool.submit(self._prepare_and_activate, prompt_set)
        return SetParametersResult(successful=True)

    def _reconfigure(self, config: CassConfig) -> None:
        """On the prompt thread: the new algorithm settings on the same
        models (no weights read), prompts re-prepared (the clusters follow
        cluster_threshold), swapped in with one assignment."""
        try:
            old = self._active
            segmenter = old.segmenter.with_config(config)
            prepared = segmenter.prepare_prompts(old.prompt_set, prompt_id=old.prompt_id)
            with self._lock:
                self._active = dataclasses.replace(old, prepared=prepared, segmenter=segmenter)
            self.get_logger().info(f"settings in force: {segmenter.describe()}")
        except Exception as e:  # noqa: BLE001 - keep the old settings, say why
            if self.context.ok():
                self.get_logger().error(f"cannot apply the new settings ({type(e).__name__}: "
                                        f"{e}); keeping the old ones")

    def _prepare_and_activate(self, prompt_set: PromptSet) -> None:
        """On the prompt thread: encode the texts (slow, cached per name),
        then swap the active set in one assignment."""
        try:
            with self._lock:
                prompt_id = self._next_prompt_id
                self._next_prompt_id += 1
            segmenter = self._active.segmenter
            prepared = segmenter.prepare_prompts(prompt_set, prompt_id=prompt_id)
            active = _Active(prompt_id, prompt_set, prepared, palette(prompt_set.num_labels),
                             segmenter)
            with self._lock:
                self._active = active
            self._publish_class_table(active)
            self.get_logger().info(f"prompt_id {prompt_id}: "
                                   + ", ".join(prompt_set.class_names[1:]))
        except Exception as e:  # noqa: BLE001 - keep the old set, say why
            if self.context.ok():
                self.get_logger().error(f"cannot prepare prompts ({type(e).__name__}: {e}); "
                                        f"keeping prompt_id {self._active.prompt_id}")

    def _publish_class_table(self, active: _Active) -> None:
        from std_msgs.msg import Header

        header = Header()
        header.stamp = self.get_clock().now().to_msg()
        self._pub_classes.publish(class_table_msg(active.prompt_set, active.prompt_id, header))

    # ------------------------------------------------------------ diagnostics

    def camera_stats(self) -> list[dict[str, Any]]:
        """Per camera: counters, and rate / latency over the last seconds."""
        now = time.monotonic()
        out = []
        for cam in self._cameras:
            recent = [w for w in list(cam.window) if now - w[0] <= STATS_WINDOW_S]
            rate = len(recent) / STATS_WINDOW_S
            latency = sum(w[1] for w in recent) / len(recent) if recent else 0.0
            infer = sum(w[2] for w in recent) / len(recent) if recent else 0.0
            out.append({
                "camera": cam.name, "topic": cam.topic, "rate_hz": rate,
                "latency_ms": latency, "inference_ms": infer, "received": cam.received,
                "processed": cam.processed, "dropped": cam.dropped + cam.missed,
                "dropped_in_node": cam.dropped, "dropped_in_dds": cam.missed,
                "throttled": cam.throttled,
                "rejected": cam.rejected, "failed": cam.failed, "overlays": cam.overlays,
                "silent_s": (now - cam.last_image) if cam.last_image else None,
            })
        return out

    def _publish_diagnostics(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        stats = self.camera_stats()
        active = self._active
        segmenter = self._active.segmenter
        device = str(segmenter.device)
        model = segmenter.describe()
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        for s in stats:
            st = DiagnosticStatus()
            st.name = f"{self.get_fully_qualified_name()}: camera {s['camera']}"
            st.hardware_id = device
            if s["silent_s"] is None:
                st.level, st.message = DiagnosticStatus.WARN, f"no images yet on {s['topic']}"
            elif s["silent_s"] > STALE_AFTER_S:
                st.level, st.message = DiagnosticStatus.WARN, \
                    f"no images for {s['silent_s']:.0f} s on {s['topic']}"
            elif s["failed"] and s["processed"] == 0:
                st.level, st.message = DiagnosticStatus.ERROR, "inference fails"
            else:
                st.level = DiagnosticStatus.OK
                st.message = f"{s['rate_hz']:.1f} Hz, {s['latency_ms']:.0f} ms"
            values = {k: v for k, v in s.items() if k not in ("camera", "silent_s")}
            values.update(device=device, model=model, prompt_id=active.prompt_id,
                          classes=len(active.prompt_set.class_names) - 1)
            st.values = [KeyValue(key=k, value=(f"{v:.2f}" if isinstance(v, float) else str(v)))
                         for k, v in values.items()]
            arr.status.append(st)
        self._pub_diag.publish(arr)

        if time.monotonic() - self._last_summary >= SUMMARY_PERIOD_S:
            self._last_summary = time.monotonic()
            parts = [f"{s['camera']}: {s['rate_hz']:.1f} Hz, {s['latency_ms']:.0f} ms latency, "
                     f"{s['processed']} done, {s['dropped']} dropped, {s['rejected']} rejected"
                     for s in stats]
            self.get_logger().info(" | ".join(parts) + f" | {device}, prompt_id "
                                   f"{active.prompt_id}")

    # ---------------------------------------------------------------- shutdown

    def shutdown(self) -> None:
        """Stop the inference and prompt threads (before destroy_node)."""
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=10.0)
        if self._prompt_pool is not None:
            self._prompt_pool.shutdown(wait=True, cancel_futures=True)
            self._prompt_pool = None

    def _teardown(self) -> None:
        self.shutdown()
        logging.getLogger("cass_ros").removeHandler(self._log_handler)
        self.destroy_node()

    def destroy_node(self) -> None:
        self.shutdown()
        logging.getLogger("cass_ros").removeHandler(self._log_handler)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``cass_node`` (``ros2 run cass_ros cass_node``)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        try:
            node = CassNode()
        except StartupError as e:
            rclpy.logging.get_logger(NODE_NAME).fatal(str(e))
            return 1
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""cass_node: the live ROS 2 node around cass_ros.core.Segmenter.

The node only adapts the segmenter's API (docs/ros-interface.md); this
module is the wiring, each concern has its own unit:

- cameras.CameraBoard: subscription callbacks store the newest frame per
  camera and return (an unprocessed older frame is dropped and counted);
- workers.frames.FrameWorker: one inference thread takes every frame that is
  ready, converts them, runs them through the segmenter in one call, and
  publishes labels, objects and (when wanted) the colour overlay and the
  vision_msgs detections (vision.py; latched label_info per prompt set);
- workers.prompts.PromptWorker: prompt changes (topic or parameters) are
  validated at once, encoded on a separate thread, and swapped in as one
  ActivePrompts (the library's PromptSession) between frames; /cass/classes
  (latched) announces each accepted set. Without prompts the node starts
  and waits for them ("No prompts at start-up");
- outputs.semantic_inference and services.encode_feature: with
  ``semantic_inference: true``, semantic_inference's open-set topics and its
  EncodeFeature service for Hydra, Khronos and Clio (one log line when the
  semantic_inference_msgs package is missing);
- parameter_changes.ParameterChanges: parameter changes and /cass/prompts
  messages, one validated path, handed to the prompt thread;
- diagnostics: a timer publishes /diagnostics and logs a summary line;
- stopping: SIGINT, SIGTERM or the context shut down stop it at once,
  during start-up as in steady state.

The wiring is four steps, shared with the managed node (lifecycle_node.py,
docs/ros-interface.md, "Managed node"): ``_declare`` (parameters, the
parameter callback, /cass/prompts), ``_configure`` (models, prompt set,
publishers, prompt thread), ``_activate`` (image subscriptions, inference
thread, diagnostics) and their inverses ``_deactivate`` / ``_cleanup``.
CassNode runs the first three in its constructor.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import rclpy
import rclpy.subscription
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from ...core.config import CassConfig, ConfigError
from ...core.prompt_session import ActivePrompts
from ...core.prompts import PromptError, PromptSet, check_prompt_set
from .. import params as node_params
from ..inputs.cameras import Camera, CameraBoard
from ..inputs.depth import DepthInput
from ..inputs.image_conversion import cv_bridge_available
from ..outputs import mappers as mapper_outputs
from ..outputs import semantic_inference
from ..outputs.announcer import Announcer
from ..outputs.diagnostics import Facts, diagnostic_array, summary_line
from ..outputs.publishers import LATCHED_QOS, OUT_IMAGE_QOS, PROMPTS_QOS, camera_outputs
from ..outputs.vision import vision_msgs_missing
from ..services.encode_feature import EncodeFeatureService
from ..services.query import QueryServices
from ..workers.frames import FrameWorker, ImageMsg
from ..workers.in_force import InForce
from ..workers.prompts import PromptWorker
from . import depth as depth_wiring
from . import entities, log_bridge, memory
from .model_setup import StartupError, load_segmenter, log_preset, one_line, warm_up
from .parameter_changes import ParameterChanges
from .stopping import StopRequested, StopSignals, quick_exit

if TYPE_CHECKING:  # torch loads in model_setup.load_segmenter, after the parameter checks
    pass

NODE_NAME = "cass_node"
DIAG_PERIOD_S = 1.0        # /diagnostics
SUMMARY_PERIOD_S = 5.0     # the summary line in the log
DEACTIVATE_WAIT_S = 30.0   # deactivate waits this long for the batch in progress

# QoS of docs/ros-interface.md, QoS (publishers.py).
_RELIABLE = ReliabilityPolicy.RELIABLE
# rclpy >= Iron passes MessageInfo (with sequence numbers) to two-argument
# callbacks; it lets the node count frames that DDS replaced in its
# keep-last-1 queue before the callback saw them (Kilted names the type
# MessageInfo; Jazzy has only the CallbackType switch). Humble: message only.
_WITH_INFO = (hasattr(rclpy.subscription, "MessageInfo")
              or hasattr(rclpy.subscription.Subscription, "CallbackType"))


def image_qos(runtime: node_params.RuntimeParams) -> QoSProfile:
    """Camera subscriptions: keep last 1, best effort unless image_qos says reliable."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                      durability=DurabilityPolicy.VOLATILE,
                      reliability=_RELIABLE if runtime.image_qos == "reliable"
                      else ReliabilityPolicy.BEST_EFFORT)


class CassNodeBase(ParameterChanges, Node):
    """The node's state and steps, shared by CassNode and the managed
    CassLifecycleNode. The constructor declares the parameters (``_declare``);
    raises StartupError when it cannot, StopRequested when it is stopped."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._stop = threading.Event()
        self._destroyed = False
        self._log_handler = log_bridge.attach(self.get_logger())
        self._board: CameraBoard[ImageMsg] | None = None
        self._frames: FrameWorker | None = None
        self._frames_stop = threading.Event()   # per activation; set by deactivate and stop
        self._prompts: PromptWorker | None = None
        self._depth: DepthInput | None = None
        self._infos: mapper_outputs.CameraInfos | None = None
        self._queries: QueryServices | None = None
        self._encode_feature: EncodeFeatureService | None = None   # semantic_inference
        self._in_force: InForce | None = None   # None: not configured (no models)
        self._active = False                    # frames are taken and outputs published
        # what configure / activate created: (destroy method, entity)
        self._configured_entities: list[tuple[str, Any]] = []
        self._active_entities: list[tuple[str, Any]] = []
        self.context.on_shutdown(self.stop)
        self._start_up(self._declare)

    def _start_up(self, *steps: Any) -> None:
        """Run start-up steps; a failure destroys the node and raises
        StartupError (one line), a stop raises StopRequested."""
        try:
            for step in steps:
                step()
        except (ConfigError, PromptError) as e:
            self.destroy_node()
            raise StartupError(one_line(str(e))) from None
        except BaseException as e:
            stopping = self._stopping()
            self.destroy_node()
            if stopping and isinstance(e, Exception):
                # e.g. "rcl node's context is invalid": the stop, not a failure
                raise StopRequested("context shut down") from None
            raise

    # ------------------------------------------------------------------ setup

    def _declare(self) -> None:
        """Parameters, the parameter callback and /cass/prompts: they work in
        every state (a managed node validates and stores changes until
        configured)."""
        node_params.declare_all(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._sub_prompts = self.create_subscription(String, "cass/prompts", self._on_prompt_text,
                                                     PROMPTS_QOS)

    def _configure(self) -> None:
        """Read the parameters, load the models, encode the start-up prompt
        set, create the publishers and start the prompt thread."""
        values = node_params.read_all(self)
        config, runtime = node_params.settings_from_values(values)
        for line in node_params.idle_settings(values):
            self.get_logger().warning(line)
        # Prompts are checked before the models load, so a bad prompt or an
        # unreadable classes_file fails in a second, not after the weights.
        initial = self._initial_prompt_set(config)
        self.config: CassConfig = config
        # The prompt parameters in force (a preset's classes_file included).
        self._prompt_values = {"prompts": list(config.prompts),
                               "classes_file": config.classes_file,
                               "background_classes": list(config.background_classes)}
        log_preset(config, self.get_logger())
        self._check_stop()
        segmenter = load_segmenter(config)
        self.get_logger().info(f"model: {segmenter.describe()}")
        in_force = InForce(segmenter, runtime)
        if initial is not None:
            self._check_stop()
            in_force.session.request(initial)
            in_force.session.activate(segmenter, initial)
        if config.compile != "none":
            self._check_stop()
            warm_up(segmenter, len(runtime.image_topics), self.get_logger())
        self._check_stop()
        with entities.created(self, self._configured_entities):
            self._make_interfaces(runtime)
        self._in_force = in_force
        self._write_color_table(in_force.session.active)
        self._prompts = PromptWorker(self._in_force, self._announce, self.get_logger(), self._stop,
                                     settings_applied=self._publish_label_info)
        self._prompts.start()

    def _activate(self) -> None:
        """Subscribe to the cameras and start the inference thread."""
        runtime = self._in_force.runtime
        msg_type = CompressedImage if runtime.image_transport == "compressed" else Image
        qos = image_qos(runtime)
        with entities.created(self, self._active_entities):
            self._subscriptions_in = [subscribe_camera(self, cam, msg_type, qos, self._on_image)
                                      for cam in self._board.cameras]
            if self._depth is not None:
                depth_wiring.subscribe(self, self._depth, qos)
            mapper_outputs.subscribe(self, self._infos)
            self._start_workers()
        self.get_logger().info(ready_line(self._board.cameras, self._in_force.session.active,
                                          self._sub_prompts.topic_name, runtime))

    def _deactivate(self) -> None:
        """Stop the inference thread (the batch in progress finishes first:
        nothing is published afterwards), unsubscribe, and hand the cached
        CUDA memory back."""
        self._active = False
        entities.destroy(self, self._active_entities)
        self._subscriptions_in = []
        self._frames_stop.set()
        if self._board is not None:
            self._board.wake()
        if self._frames is not None:
            self._frames.join(DEACTIVATE_WAIT_S)
            if self._frames.alive():
                self.get_logger().warning(
                    f"the inference thread did not stop within {DEACTIVATE_WAIT_S:.0f} s")
        self._frames = None
        if self._board is not None:
            self._board.clear()       # frames from before: stale on activation
        memory.release(self._in_force.segmenter.device if self._in_force else None, trim=False)

    def _cleanup(self) -> None:
        """Drop the models, the prompt session and the publishers (the
        parameters keep their values)."""
        if self._active:
            self._deactivate()
        if self._prompts is not None:
            self._prompts.close()
            if not self._prompts.join(DEACTIVATE_WAIT_S):
                self.get_logger().warning("a prompt encoding is still running: its memory "
                                          "is freed when it ends")
        device = self._in_force.segmenter.device if self._in_force else None
        entities.destroy(self, self._configured_entities)
        self._prompts = self._in_force = self._board = self._frames = self._depth = None
        self._infos = self._queries = self._encode_feature = None
        self._outputs = []
        memory.release(device, trim=True)

    @staticmethod
    def _initial_prompt_set(config: CassConfig) -> PromptSet | None:
        """The start-up prompt set; None when none is asked for (wait)."""
        if not node_params.names_prompts(config.prompts, config.classes_file):
            return None
        return check_prompt_set(node_params.prompt_set_from_values(config, {}))

    def _make_interfaces(self, runtime: node_params.RuntimeParams) -> None:
        # Relative names: /cass/... in the root namespace, /<ns>/cass/... in a namespace.
        self._announcer = Announcer(self, LATCHED_QOS)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        compressed = runtime.image_transport == "compressed"
        topics = [t.rstrip("/") + "/compressed" if compressed else t for t in runtime.image_topics]
        self._board = CameraBoard(runtime.cameras(), topics)
        self._vision_off = vision_msgs_missing()
        if self._vision_off is not None:
            self.get_logger().warning("/cass/<cam>/detections and /cass/<cam>/label_info are "
                                      f"off: {self._vision_off}")
        self._outputs = [camera_outputs(self, cam, self._vision_off) for cam in self._board.cameras]
        self._depth, self._outputs = depth_wiring.attach(self, runtime, self._board.cameras,
                                                         self._outputs)
        self._infos, self._outputs = mapper_outputs.attach(self, runtime, self._board.cameras,
                                                           self._outputs, OUT_IMAGE_QOS)
        self._queries = QueryServices(self, self._board.cameras, lambda: self._in_force,
                                      lambda: self._prompt_values["background_classes"],
                                      runtime.vocabulary_file)
        # semantic_inference's open-set contract: both or neither (attach
        # logs why when asked for and the package is missing)
        self._outputs = semantic_inference.attach(self, runtime, self._board.cameras,
                                                  self._outputs)
        if self._outputs and self._outputs[0].feature_image is not None:
            self._encode_feature = EncodeFeatureService(self, lambda: self._in_force)

    def _start_workers(self) -> None:
        """On activation: the inference thread, the class table in force
        (prompts accepted while inactive included), diagnostics."""
        self._frames_stop = threading.Event()
        if self._stop.is_set():
            self._frames_stop.set()
        self._frames = FrameWorker(self._board, self._outputs, self._in_force.work,
                                   self.get_logger(), self._frames_stop, depth=self._depth,
                                   infos=self._infos, kept=self._queries.frames)
        self._frames.start()
        self._active = True
        active = self._in_force.session.active
        if active is not None:
            self._publish_class_table(active)
        self._last_summary = time.monotonic()
        self._diag_timer = self.create_timer(DIAG_PERIOD_S, self._publish_diagnostics)

    # ------------------------------------------------------------------ input

    def _on_image(self, msg: ImageMsg, cam: Camera[ImageMsg],
                  info: rclpy.subscription.MessageInfo | None = None) -> None:
        board, in_force = self._board, self._in_force
        if not self._active or board is None or in_force is None:
            return      # a callback already under way while the node deactivates
        board.offer(cam, msg, time.monotonic(), in_force.runtime.max_rate_hz,
                    in_force.waiting, info)

    def _announce(self, active: ActivePrompts) -> None:
        """On the prompt thread, once a set is active: the class table, and
        the frame that waited for prompts is segmented right away. While
        inactive nothing is published: activation publishes the table."""
        if self._active:
            self._publish_class_table(active)
        self._write_color_table(active)
        if self._board is not None:
            self._board.wake()

    def _publish_class_table(self, active: ActivePrompts) -> None:
        self._announcer.class_table(active, self._publish_label_info)

    def _write_color_table(self, active: ActivePrompts | None) -> None:
        path = self._in_force.runtime.color_table_file if self._in_force else ""
        self._announcer.color_table(path, active)

    def _publish_label_info(self) -> None:
        """Again after a settings change (prob_threshold); not while inactive:
        activation publishes it with the class table."""
        in_force = self._in_force
        if not self._active or in_force is None:
            return
        self._announcer.label_info(
            in_force.session.active,
            [out.label_info for out in self._outputs if out.label_info is not None],
            in_force.segmenter.config.prob_threshold)

    # ------------------------------------------------------------ diagnostics

    def camera_stats(self) -> list[dict[str, Any]]:
        """Per camera: counters, and rate / latency over the last seconds."""
        stats = self._board.stats(time.monotonic()) if self._board is not None else []
        if self._depth is not None:     # depth_matched / _unmatched / _rejected
            for i, s in enumerate(stats):
                s.update(self._depth.stats(i))
        return stats

    def _facts(self) -> Facts:
        segmenter = self._in_force.segmenter
        active = self._in_force.session.active
        return Facts(device=str(segmenter.device), model=segmenter.describe(),
                     prompt_id=active.prompt_id if active else None,
                     classes=len(active.class_names) - 1 if active else 0)

    def _publish_diagnostics(self) -> None:
        stats, facts = self.camera_stats(), self._facts()
        self._pub_diag.publish(diagnostic_array(stats, self.get_fully_qualified_name(), facts,
                                                self.get_clock().now().to_msg()))
        if time.monotonic() - self._last_summary >= SUMMARY_PERIOD_S:
            self._last_summary = time.monotonic()
            self.get_logger().info(summary_line(stats, facts))

    # ---------------------------------------------------------------- stopping

    def _stopping(self) -> bool:
        return self._stop.is_set() or not self.context.ok()

    def _check_stop(self) -> None:
        """Between start-up steps: a context shut down (by rclpy's signal
        handler, or by its owner) ends the start-up here."""
        if self._stopping():
            raise StopRequested("context shut down")

    def stop(self) -> None:
        """Stop the inference and prompt threads without waiting for a
        prompt encoding; also the context's on_shutdown callback."""
        self._stop.set()
        self._frames_stop.set()
        if self._board is not None:
            self._board.wake()
        if self._prompts is not None:
            self._prompts.close()

    def destroy_node(self) -> None:
        """Stop (a batch in progress gets a moment), then the ROS entities."""
        if self._destroyed:
            return
        self._destroyed = True
        self.stop()
        if self._frames is not None:
            self._frames.join()
        log_bridge.detach(self._log_handler)
        super().destroy_node()

    def serve(self) -> None:
        """Process callbacks until the context shuts down."""
        rclpy.spin(self)


class CassNode(CassNodeBase):
    """The CASS segmentation node: configured and active once constructed.
    Raises StartupError when it cannot start, StopRequested when it is
    stopped while starting."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._start_up(self._configure, self._check_stop, self._activate)


def ready_line(cameras: Sequence[Camera[ImageMsg]], active: ActivePrompts | None,
               prompts_topic: str, runtime: node_params.RuntimeParams) -> str:
    """The one line that says the node is ready: its cameras, and its prompt
    set or where it waits for one (the resolved name includes the namespace)."""
    names = ", ".join(f"{c.topic} -> /cass/{c.name}" for c in cameras)
    if active is None:
        prompts = f"waiting for prompts on {prompts_topic} or the 'prompts' parameter"
    else:
        prompts = f"prompt_id {active.prompt_id}: {', '.join(active.class_names[1:])}"
    return (f"ready: {names} ({runtime.image_transport}, {runtime.image_qos}); {prompts}; "
            f"image conversion: {'cv_bridge' if cv_bridge_available() else 'built-in'}")


def subscribe_camera(node: Node, cam: Camera[ImageMsg], msg_type: type[ImageMsg],
                     qos: QoSProfile, on_image: Callable[..., None]) -> Subscription:
    """A camera's image subscription, passing MessageInfo where rclpy has it."""
    if _WITH_INFO:
        def callback(m: ImageMsg, info: rclpy.subscription.MessageInfo) -> None:
            on_image(m, cam, info)
    else:  # pragma: no cover - Humble
        def callback(m: ImageMsg) -> None:
            on_image(m, cam)
    return node.create_subscription(msg_type, cam.topic, callback, qos)


def run(args: list[str] | None = None, signals: StopSignals | None = None,
        make_node: Callable[[StopSignals], CassNodeBase] | None = None) -> int:
    """Run the node until it is stopped; the exit status (docs/ros-interface.md,
    Executables): 0 for a requested stop, 1 when it cannot start. ``signals``:
    handlers an entry script installed before importing this module;
    ``make_node``: the node to run (default CassNode)."""
    signals = signals or StopSignals()  # before rclpy.init, whose handler calls ours
    node = None
    status = 0
    try:
        try:
            rclpy.init(args=args if args is not None else sys.argv,
                       signal_handler_options=SignalHandlerOptions.ALL)
            node = make_node(signals) if make_node is not None else CassNode()
            signals.note_only()     # rclpy's handler ends the spin from here on
            node.serve()
        except StartupError as e:
            rclpy.logging.get_logger(NODE_NAME).fatal(str(e))
            status = 1
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
    except StopRequested:
        pass
    finally:
        signals.note_only()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        signals.restore()
    if signals.received is not None:
        rclpy.logging.get_logger(NODE_NAME).info(f"stopped ({signals.received.name})")
    return status


def main(args: list[str] | None = None, signals: StopSignals | None = None,
         make_node: Callable[[StopSignals], CassNodeBase] | None = None) -> NoReturn:
    """Entry point of ``cass_node`` (``ros2 run cass_ros cass_node``): ``run``,
    then end the process at once (stopping.quick_exit). In-process callers use
    ``run``."""
    try:
        status = run(args, signals, make_node)
    except StopRequested:       # a signal in the instant before the clean-up
        status = 0
    quick_exit(status)


if __name__ == "__main__":
    main()

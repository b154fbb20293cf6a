"""The node's ROS parameters: declaration, reading, validation.

The one place that turns ROS parameters into the segmenter's CassConfig and
the node's RuntimeParams. The segmenter settings' parameters
(docs/ros-interface.md: Model, Algorithm, Prompts) are generated from
CassConfig's fields, whose SettingInfo holds description, range, choices and
run-time flag; the node's own (Inputs, Runtime) are declared here next to
RuntimeParams. config/cass.yaml lists every parameter with the default
declared here (test/ros/test_params.py compares the two).

rclpy is imported only inside the functions that need a node, so the bag
tool and the tests can use the pure parts (defaults, camera names,
validation) without a ROS context.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from ..core.config import (ALGORITHM, FIELD_NAMES, PROMPTS, CassConfig, ConfigError, build_config,
                           coerce, group_names, setting_info, setting_type)
from ..core.prompts import (PromptError, PromptSet, check_prompt_set, prompt_set_from_settings,
                            read_classes_file)
from ..core.temporal import TemporalParams

if TYPE_CHECKING:   # scipy loads with them: not before the parameters are checked
    from ..core.objects.instances import InstanceParams
    from ..core.objects.tracks import TrackParams

TRANSPORTS = ("raw", "compressed")
DETECTIONS_PER = ("class", "instance")
FEATURE_DTYPES = ("float16", "float32")
QOS_CHOICES = ("best_effort", "reliable")
OUTPUT_SIZES = ("input", "model")


# ----------------------------------------------------------------- declarations

@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter of cass_node (docs/ros-interface.md, Parameters)."""

    name: str
    default: Any
    description: str
    kind: str                      # bool, int, float, str, list
    low: float | None = None       # inclusive range for int/float
    high: float | None = None
    choices: tuple[str, ...] = ()
    runtime: bool = False          # may change while the node runs
    needs: str = ""                # a key of NEEDS: it does nothing without that

    def constraints(self, with_runtime: bool = True) -> str:
        parts = []
        if self.choices:
            parts.append("one of: " + ", ".join(c or '""' for c in self.choices))
        if self.low is not None:
            parts.append(f"range [{_fmt(self.low)}, {_fmt(self.high)}]")
        if with_runtime:
            parts.append("changeable at run time" if self.runtime
                         else "read-only: restart the node to change")
        return "; ".join(parts)


def _fmt(v: float | None) -> str:
    return "" if v is None else (str(int(v)) if float(v).is_integer() else str(v))


@dataclass(frozen=True)
class RuntimeParams:
    """The node's own parameters (docs/ros-interface.md, Topics and Runtime)."""

    image_topics: tuple[str, ...] = ("/camera/image_raw",)
    camera_names: tuple[str, ...] = ()
    image_transport: str = "raw"
    image_qos: str = "best_effort"
    max_rate_hz: float = 0.0
    publish_color: bool = False
    color_alpha: float = 0.5
    min_pixels: int = 1
    output_size: str = "input"
    publish_detections: bool = False
    # mapping-stack outputs (docs/ros-interface.md, "Outputs for mappers")
    overlay_legend: bool = False
    color_table_file: str = ""
    mask_classes: tuple[str, ...] = ()
    camera_info_topics: tuple[str, ...] = ()    # per image topic; () or '' = next to it
    # /cass/describe (docs/ros-interface.md, "Queries")
    vocabulary_file: str = ""                   # '' = the shipped vocabulary
    # instances and tracks (docs/ros-interface.md, "Instances and tracks")
    instances: bool = False
    instance_min_pixels: int = 0                # 0 = 0.1 % of the label image
    instance_depth_jump: float = 0.0
    track_min_iou: float = 0.3
    track_max_missed: int = 5
    track_min_hits: int = 1
    track_max_distance_m: float = 1.0
    publish_instances: bool = False
    detections_per: str = "class"
    overlay_instance_outline: bool = False
    track_reid_seconds: float = 0.0             # 0 = ended tracks are not re-identified
    track_reid_min_cosine: float = 0.8
    # language features (docs/ros-interface.md, "Language features")
    publish_features: bool = False
    features_dtype: str = "float16"
    instance_embeddings: bool = False
    semantic_inference: bool = False
    # temporal stability (core.temporal.TemporalParams, docs/algorithm.md 5.6)
    temporal_smoothing: float = TemporalParams.smoothing
    temporal_reset_gap_s: float = TemporalParams.reset_gap_s
    temporal_present_on_frames: int = TemporalParams.present_on_frames
    temporal_present_off_frames: int = TemporalParams.present_off_frames

    def temporal(self) -> TemporalParams:
        """The per-camera temporal stream's parameters."""
        return TemporalParams(self.temporal_smoothing, self.temporal_reset_gap_s,
                              self.temporal_present_on_frames, self.temporal_present_off_frames)
    depth_topics: tuple[str, ...] = ()          # per image topic; '' = none; () = off
    depth_info_topics: tuple[str, ...] = ()     # () or '' = camera_info next to the depth topic
    depth_tolerance_s: float = 0.02
    depth_trim_percent: float = 5.0
    cloud_stride: int = 4

    def validate(self) -> "RuntimeParams":
        _need(len(self.image_topics) > 0, "image_topics", "must name at least one topic")
        for topic in self.image_topics:
            _need(_valid_topic(topic), "image_topics", f"{topic!r} is not a valid topic name")
        _need(len(set(self.image_topics)) == len(self.image_topics), "image_topics",
              "names a topic twice")
        if self.camera_names:
            _need(len(self.camera_names) == len(self.image_topics), "camera_names",
                  f"has {len(self.camera_names)} names for {len(self.image_topics)} image_topics")
            for name in self.camera_names:
                _need(bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name)), "camera_names",
                      f"{name!r} is not usable in a topic name (letters, digits, '_')")
            _need(len(set(self.camera_names)) == len(self.camera_names), "camera_names",
                  "holds a name twice")
        _need(self.image_transport in TRANSPORTS, "image_transport",
              f"must be one of {', '.join(TRANSPORTS)}, not {self.image_transport!r}")
        _need(self.image_qos in QOS_CHOICES, "image_qos",
              f"must be one of {', '.join(QOS_CHOICES)}, not {self.image_qos!r}")
        _need(math.isfinite(self.max_rate_hz) and self.max_rate_hz >= 0, "max_rate_hz",
              "must be >= 0 (0: as fast as inference allows)")
        _need(0.0 <= self.color_alpha <= 1.0, "color_alpha", "must be in [0, 1]")
        _need(self.min_pixels >= 1, "min_pixels", "must be >= 1")
        _need(self.output_size in OUTPUT_SIZES, "output_size",
              f"must be one of {', '.join(OUTPUT_SIZES)}, not {self.output_size!r}")
        self.temporal().validate(prefix="temporal_")
        self._validate_depth()
        self._validate_mapping()
        _need(self.detections_per in DETECTIONS_PER, "detections_per",
              f"must be one of {', '.join(DETECTIONS_PER)}, not {self.detections_per!r}")
        self.instance_params().validate(prefix="instance_")
        self.track_params().validate(prefix="track_")
        return self

    def instance_params(self) -> InstanceParams:
        """How instances are cut from a camera's label image (core.objects)."""
        from ..core.objects.instances import InstanceParams

        return InstanceParams(self.instance_min_pixels, self.instance_depth_jump)

    def track_params(self) -> TrackParams:
        """How a camera's instances are followed; restarts as its temporal
        stream would (temporal_reset_gap_s)."""
        from ..core.objects.tracks import TrackParams

        return TrackParams(self.track_min_iou, self.track_max_missed, self.track_min_hits,
                           self.track_max_distance_m, self.temporal_reset_gap_s,
                           self.track_reid_seconds, self.track_reid_min_cosine)

    def _validate_mapping(self) -> None:
        """Outputs for mappers (docs/ros-interface.md, "Outputs for mappers")."""
        if self.camera_info_topics:
            _need_topics(self.camera_info_topics, len(self.image_topics), "camera_info_topics",
                         "image_topics (one per image topic, '' for the one next to it)")
        for name in self.mask_classes:
            _need(bool(name.strip()) and name == name.strip(), "mask_classes",
                  f"holds {name!r}: class names are non-empty, without spaces around them")
        _need("\n" not in self.color_table_file and "\0" not in self.color_table_file,
              "color_table_file", "must be a file path on one line")

    def image_info_topics(self) -> list[str]:
        """The camera_info topic per image topic (``camera_info_topics``, else
        the one next to the image topic)."""
        given = self.camera_info_topics or ("",) * len(self.image_topics)
        return [info or camera_info_topic(topic) for topic, info in zip(self.image_topics, given)]

    def _validate_depth(self) -> None:
        """Depth to 3D (docs/ros-interface.md, "Depth to 3D")."""
        if self.depth_topics:
            _need(len(self.depth_topics) == len(self.image_topics), "depth_topics",
                  f"has {len(self.depth_topics)} entries for {len(self.image_topics)} "
                  "image_topics (one per image topic, '' for none)")
        named = [t for t in self.depth_topics if t]
        for topic in named:
            _need(_valid_topic(topic), "depth_topics", f"{topic!r} is not a valid topic name")
        _need(len(set(named)) == len(named), "depth_topics", "names a topic twice")
        if self.depth_info_topics:
            _need_topics(self.depth_info_topics, len(self.depth_topics), "depth_info_topics",
                         "depth_topics (one per depth topic, '' for the one next to it)")
        _need(math.isfinite(self.depth_tolerance_s) and self.depth_tolerance_s >= 0,
              "depth_tolerance_s", "must be >= 0 seconds")
        _need(math.isfinite(self.depth_trim_percent) and 0 <= self.depth_trim_percent < 50,
              "depth_trim_percent", "must be in [0, 50)")
        _need(self.cloud_stride >= 1, "cloud_stride", "must be >= 1")

    def depth_inputs(self) -> list[tuple[str, str] | None]:
        """Per image topic: (depth topic, camera_info topic), or None for a
        camera without depth. The default camera_info topic is the depth
        topic's sibling (``/cam/depth/image_raw`` -> ``/cam/depth/camera_info``)."""
        out: list[tuple[str, str] | None] = []
        for i, topic in enumerate(self.depth_topics):
            info = self.depth_info_topics[i] if self.depth_info_topics else ""
            out.append((topic, info or camera_info_topic(topic)) if topic else None)
        return out or [None] * len(self.image_topics)

    def cameras(self) -> list[str]:
        """Camera name per image topic: ``camera_names`` or derived."""
        if self.camera_names:
            return list(self.camera_names)
        return camera_names_for(self.image_topics)


def camera_info_topic(image_topic: str) -> str:
    """The camera_info topic next to an image topic (image_transport's rule)."""
    head, _, _ = image_topic.rpartition("/")
    return f"{head}/camera_info" if head or image_topic.startswith("/") else "camera_info"


def _need(ok: bool, name: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"parameter '{name}' {why}")


def _need_topics(topics: Sequence[str], count: int, name: str, per: str) -> None:
    """A list of one topic (or '') per entry of another list."""
    _need(len(topics) == count, name, f"has {len(topics)} entries for {count} {per}")
    for topic in topics:
        _need(not topic or _valid_topic(topic), name, f"{topic!r} is not a valid topic name")


def _valid_topic(topic: str) -> bool:
    # rcl's rules in short: tokens of letters, digits and '_', not starting
    # with a digit, separated by '/', optionally '~' or '/' in front.
    return bool(re.fullmatch(r"(~/|/)?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*", topic))


# What a parameter may need to do anything (ParamSpec.needs): a test on all
# the parameter values, and how a parameters file turns it on.
NEEDS: dict[str, tuple[Callable[[Mapping[str, Any]], bool], str]] = {
    "instances": (lambda v: bool(v.get("instances")), "instances: true"),
    "depth": (lambda v: any(v.get("depth_topics") or ()), "depth_topics"),
    "instances and depth": (lambda v: bool(v.get("instances")) and any(v.get("depth_topics") or ()),
                            "instances: true and depth_topics"),
    "track re-identification": (lambda v: bool(v.get("instances"))
                                and bool(v.get("track_reid_seconds")),
                                "instances: true and track_reid_seconds > 0"),
}


def idle_settings(values: Mapping[str, Any]) -> list[str]:
    """One line per parameter set away from its default that does nothing
    with the other values (a ParamSpec's ``needs`` not met), e.g.
    ``publish_instances: true`` without ``instances: true``. The node and
    cass_bag log these as warnings (docs/ros-interface.md, Parameters)."""
    out = []
    for spec in NODE_PARAM_SPECS:
        if (spec.needs and spec.name in values and not _same(values[spec.name], spec.default)
                and not NEEDS[spec.needs][0](values)):
            out.append(f"parameter {spec.name!r} is set ({values[spec.name]!r}) but does "
                       f"nothing without {NEEDS[spec.needs][1]}")
    return out


# The node's own parameters (RuntimeParams' fields, defaults from it), in the
# order of config/cass.yaml.
NODE_PARAM_SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("image_topics", list(RuntimeParams.image_topics), "Camera image topics (raw "
              "transport names; compressed subscribes <topic>/compressed)", "list"),
    ParamSpec("camera_names", list(RuntimeParams.camera_names), "Output name per image topic "
              "(/cass/<name>/...); empty = derived from the topics", "list"),
    ParamSpec("image_transport", RuntimeParams.image_transport, "Image transport to subscribe",
              "str", choices=TRANSPORTS),
    ParamSpec("image_qos", RuntimeParams.image_qos, "Reliability of the image subscriptions "
              "(keep last 1)", "str", choices=QOS_CHOICES),
    ParamSpec("max_rate_hz", RuntimeParams.max_rate_hz, "Most frames per second and camera "
              "to segment; 0 = as fast as inference allows", "float", 0.0, 1000.0, runtime=True),
    ParamSpec("publish_color", RuntimeParams.publish_color, "Always compute the colour overlay "
              "(otherwise only while it has subscribers)", "bool", runtime=True),
    ParamSpec("color_alpha", RuntimeParams.color_alpha, "Opacity of the class colours in the "
              "overlay", "float", 0.0, 1.0, runtime=True),
    ParamSpec("min_pixels", RuntimeParams.min_pixels, "Pixels a class needs to count as present",
              "int", 1, 2**31 - 1, runtime=True),
    ParamSpec("output_size", RuntimeParams.output_size, "Size of the label image: input (the "
              "camera's) or model (the inference resolution, cheaper)", "str",
              choices=OUTPUT_SIZES, runtime=True),
    ParamSpec("publish_detections", RuntimeParams.publish_detections, "Always build "
              "/cass/<cam>/detections (vision_msgs; otherwise only while it has subscribers)",
              "bool", runtime=True),
    ParamSpec("overlay_legend", RuntimeParams.overlay_legend, "Draw a legend (class names in "
              "their colours) on the colour overlay", "bool", runtime=True),
    ParamSpec("color_table_file", RuntimeParams.color_table_file, "Write the class colour table "
              "as CSV (name,red,green,blue,alpha,id: Hydra / semantic_inference) to this file "
              "with every prompt set; empty = off", "str", runtime=True),
    ParamSpec("mask_classes", list(RuntimeParams.mask_classes), "Class names whose pixels are "
              "255 in /cass/<cam>/mask (mono8, nvblox's convention); empty = no mask", "list",
              runtime=True),
    ParamSpec("camera_info_topics", list(RuntimeParams.camera_info_topics), "camera_info per "
              "image topic, republished on /cass/<cam>/camera_info for the label image; empty "
              "or '' = the camera_info next to the image topic", "list"),
    ParamSpec("vocabulary_file", RuntimeParams.vocabulary_file, "Vocabulary of /cass/describe "
              "(one class per line, synonyms separated by , or |); empty = the shipped one (the "
              "presets' classes)", "str"),
    ParamSpec("instances", RuntimeParams.instances, "Cut each class's connected regions into "
              "instances, track them and publish /cass/<cam>/instance_objects", "bool",
              runtime=True),
    ParamSpec("instance_min_pixels", RuntimeParams.instance_min_pixels, "Pixels a region needs "
              "to be an instance; 0 = 0.1 % of the label image", "int", 0, 2**31 - 1,
              runtime=True, needs="instances"),
    ParamSpec("instance_depth_jump", RuntimeParams.instance_depth_jump, "With depth: a relative "
              "depth step between neighbouring pixels that cuts a region (0.1 = 10 %); 0 = off",
              "float", 0.0, 100.0, runtime=True, needs="instances and depth"),
    ParamSpec("track_min_iou", RuntimeParams.track_min_iou, "Mask overlap (IoU) an instance "
              "needs with a track of the previous frames to continue it", "float", 0.0, 1.0,
              runtime=True, needs="instances"),
    ParamSpec("track_max_missed", RuntimeParams.track_max_missed, "Frames a track survives "
              "without an instance (its id comes back when it is found again)", "int", 0, 10000,
              runtime=True, needs="instances"),
    ParamSpec("track_min_hits", RuntimeParams.track_min_hits, "Consecutive frames before a new "
              "track is published (1 = at once)", "int", 1, 10000, runtime=True,
              needs="instances"),
    ParamSpec("track_max_distance_m", RuntimeParams.track_max_distance_m, "With depth: largest "
              "3D centroid distance (m) between a track and its continuation", "float",
              0.0, 1000.0, runtime=True, needs="instances and depth"),
    ParamSpec("publish_instances", RuntimeParams.publish_instances, "Always build "
              "/cass/<cam>/instances (32SC1; otherwise only while it has subscribers)", "bool",
              runtime=True, needs="instances"),
    ParamSpec("detections_per", RuntimeParams.detections_per, "vision_msgs detections: one per "
              "present class, or one per published track (id = the track id)", "str",
              choices=DETECTIONS_PER, runtime=True, needs="instances"),
    ParamSpec("overlay_instance_outline", RuntimeParams.overlay_instance_outline, "Outline the "
              "instances on the colour overlay", "bool", runtime=True, needs="instances"),
    ParamSpec("track_reid_seconds", RuntimeParams.track_reid_seconds, "How long (s) an ended "
              "track's embedding is kept: a new instance of its class that looks like it "
              "(track_reid_min_cosine) takes its id back; 0 = off", "float", 0.0, 86400.0,
              runtime=True, needs="instances"),
    ParamSpec("track_reid_min_cosine", RuntimeParams.track_reid_min_cosine, "Cosine of the "
              "pooled CLIP embeddings a new instance needs with an ended track to take its id "
              "back", "float", -1.0, 1.0, runtime=True, needs="track re-identification"),
    ParamSpec("publish_features", RuntimeParams.publish_features, "Always build "
              "/cass/<cam>/features (dense language features; otherwise only while it has "
              "subscribers)", "bool", runtime=True),
    ParamSpec("features_dtype", RuntimeParams.features_dtype, "Value type of "
              "/cass/<cam>/features: float16 (half the bytes) or float32", "str",
              choices=FEATURE_DTYPES, runtime=True),
    ParamSpec("instance_embeddings", RuntimeParams.instance_embeddings, "Each instance's pooled "
              "CLIP embedding in /cass/<cam>/instance_objects", "bool", runtime=True,
              needs="instances"),
    ParamSpec("semantic_inference", RuntimeParams.semantic_inference, "Publish "
              "semantic_inference's open-set outputs (FeatureImage, FeatureVectorStamped, the "
              "EncodeFeature service) for Hydra, Khronos and Clio; needs the "
              "semantic_inference_msgs package", "bool", needs="instances"),
    ParamSpec("temporal_smoothing", RuntimeParams.temporal_smoothing, "Per-camera moving "
              "average of the class probabilities before the labels: weight of the history, "
              "below 1; 0 = off", "float", 0.0, 1.0, runtime=True),
    ParamSpec("temporal_reset_gap_s", RuntimeParams.temporal_reset_gap_s, "A gap between two "
              "frames' stamps longer than this (s) restarts the average and the present "
              "hysteresis (as do prompt and size changes and stamps going back)", "float",
              0.0, 86400.0, runtime=True),
    ParamSpec("temporal_present_on_frames", RuntimeParams.temporal_present_on_frames,
              "Consecutive frames with min_pixels before a class turns present (1 = at once)",
              "int", 1, 10000, runtime=True),
    ParamSpec("temporal_present_off_frames", RuntimeParams.temporal_present_off_frames,
              "Consecutive frames under min_pixels before a class turns absent (1 = at once)",
              "int", 1, 10000, runtime=True),
    ParamSpec("depth_topics", list(RuntimeParams.depth_topics), "Aligned depth image per image "
              "topic (16UC1 mm or 32FC1 m, the colour image's size); '' = none for that camera; "
              "empty = no 3D", "list"),
    ParamSpec("depth_info_topics", list(RuntimeParams.depth_info_topics), "camera_info per "
              "depth topic; empty or '' = the camera_info next to the depth topic", "list",
              needs="depth"),
    ParamSpec("depth_tolerance_s", RuntimeParams.depth_tolerance_s, "Largest stamp difference "
              "between a colour frame and its depth image", "float", 0.0, 10.0, runtime=True,
              needs="depth"),
    ParamSpec("depth_trim_percent", RuntimeParams.depth_trim_percent, "Depth outliers trimmed "
              "at each end per axis (3D box = this and 100 - this percentile)", "float",
              0.0, 49.0, runtime=True, needs="depth"),
    ParamSpec("cloud_stride", RuntimeParams.cloud_stride, "Labelled point cloud: every n-th "
              "pixel in rows and columns", "int", 1, 1024, runtime=True, needs="depth"),
)


# ----------------------------------------------------------------- camera names

_IMAGE_SUFFIXES = ("image_raw", "image_rect_color", "image_rect", "image_color", "image_mono",
                   "image", "compressed")


def camera_name_from_topic(topic: str) -> str:
    """The camera name for an image topic: the namespace above the image
    topic (``/front/image_raw`` gives ``front``, ``/robot/left/image_rect_color``
    ``left``), ``/compressed`` ignored; a topic without one gives its last
    name. Characters a topic name cannot hold become ``_``."""
    parts = [p for p in topic.strip("~").split("/") if p]
    while len(parts) > 1 and parts[-1] in _IMAGE_SUFFIXES:
        parts.pop()
    name = parts[-1] if parts else "camera"
    name = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not name or not name[0].isalpha():
        name = "cam_" + name
    return name


def camera_names_for(topics: Sequence[str]) -> list[str]:
    """Derived names for several topics, made unique with ``_2``, ``_3`` ..."""
    names: list[str] = []
    for topic in topics:
        base = name = camera_name_from_topic(topic)
        n = 2
        while name in names:
            name = f"{base}_{n}"
            n += 1
        names.append(name)
    return names


# The segmenter settings' parameters are generated from CassConfig: name,
# default, description, range, choices and run-time flag all come from the
# field (config.SettingInfo), so they cannot drift from the library. Ranges
# are the descriptor's (rclpy enforces them); config.validate() adds the
# finer rules (slide_crop 0 or >= 16, logit_scale > 0 ...).
_C = CassConfig()
_KINDS = {"bool": "bool", "int": "int", "float": "float", "str": "str", "list[str]": "list"}
# config/cass.yaml and docs/ros-interface.md list where the networks run
# before which networks; otherwise the order is CassConfig's.
_LISTED_FIRST = ("device", "precision")


def config_param_spec(name: str) -> ParamSpec:
    """The ParamSpec of CassConfig field ``name``."""
    info = setting_info(name)
    kind = _KINDS[setting_type(name)]
    default = getattr(_C, name)
    return ParamSpec(name, list(default) if kind == "list" else default, info.description, kind,
                     info.low, info.high, info.choices, info.runtime)


def _config_param_names() -> tuple[str, ...]:
    exposed = [n for n in FIELD_NAMES if setting_info(n).node_parameter]
    return (*_LISTED_FIRST, *(n for n in exposed if n not in _LISTED_FIRST))


# Order = order of config/cass.yaml: the segmenter settings (model,
# algorithm, prompts), then the node's own.
PARAM_SPECS: tuple[ParamSpec, ...] = (
    *(config_param_spec(n) for n in _config_param_names()),
    *NODE_PARAM_SPECS,
)

SPECS: dict[str, ParamSpec] = {s.name: s for s in PARAM_SPECS}
DEFAULTS: dict[str, Any] = {s.name: s.default for s in PARAM_SPECS}
RUNTIME_NAMES = tuple(f.name for f in fields(RuntimeParams))
PROMPT_NAMES = group_names(PROMPTS)
# Segmenter settings the node exposes; crop_global_vector stays preset-internal.
CONFIG_NAMES = _config_param_names()
# Algorithm settings a running node takes (Segmenter.with_config); the model
# settings and the preset need a restart.
ALGORITHM_NAMES = tuple(n for n in CONFIG_NAMES
                        if setting_info(n).group == ALGORITHM and setting_info(n).runtime)


def descriptor_for(spec: ParamSpec) -> Any:
    """The rcl_interfaces ParameterDescriptor of a parameter."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

    types = {"bool": ParameterType.PARAMETER_BOOL, "int": ParameterType.PARAMETER_INTEGER,
             "float": ParameterType.PARAMETER_DOUBLE, "str": ParameterType.PARAMETER_STRING,
             "list": ParameterType.PARAMETER_STRING_ARRAY}
    d = ParameterDescriptor(name=spec.name, type=types[spec.kind], description=spec.description,
                            additional_constraints=spec.constraints(),
                            read_only=not spec.runtime)
    if spec.kind == "int" and spec.low is not None:
        d.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high),
                                        step=1)]
    elif spec.kind == "float" and spec.low is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.low),
                                                     to_value=float(spec.high), step=0.0)]
    return d


_KIND_WORDS = {"bool": "a bool (true/false)", "int": "an integer", "float": "a double (write "
               "1.0, not 1)", "str": "a string", "list": "a string array ([a, b])"}


def declare_all(node: Any) -> None:
    """Declare every parameter on ``node`` (values from the command line and
    parameter files override the defaults). Raises ConfigError naming the
    parameter when a given value has the wrong type or is out of range."""
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
    from rclpy.parameter import Parameter

    for spec in PARAM_SPECS:
        desc = descriptor_for(spec)
        try:
            if spec.kind == "list" and not spec.default:
                # rclpy infers the type of [] as a byte array: declare by type;
                # an unset value reads as [].
                node.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY, desc)
            else:
                node.declare_parameter(spec.name, spec.default, desc)
        except InvalidParameterTypeException:
            raise ConfigError(f"parameter '{spec.name}' expects {_KIND_WORDS[spec.kind]}"
                              ) from None
        except InvalidParameterValueException as e:
            why = getattr(e, "args", [""])[-1] if e.args else ""
            raise ConfigError(f"parameter '{spec.name}' has an unusable value "
                              f"({spec.constraints()}){': ' + str(why) if why else ''}") from None


def read_all(node: Any) -> dict[str, Any]:
    """Every declared parameter's value; unset string arrays read as []."""
    return {spec.name: _plain(node.get_parameter_or(spec.name).value, spec)
            for spec in PARAM_SPECS}


def _plain(value: Any, spec: ParamSpec) -> Any:
    if spec.kind == "list":
        return [] if value is None else [str(v) for v in value]
    return value


def runtime_from_values(values: Mapping[str, Any]) -> RuntimeParams:
    """RuntimeParams from parameter values (missing ones: defaults); validated."""
    kw: dict[str, Any] = {}
    for f in fields(RuntimeParams):
        if f.name in values:
            v = values[f.name]
            kw[f.name] = tuple(v) if isinstance(v, (list, tuple)) else v
    try:
        rt = RuntimeParams(**kw)
    except TypeError as e:  # pragma: no cover - names come from fields()
        raise ConfigError(str(e)) from None
    return rt.validate()


def config_from_values(values: Mapping[str, Any]) -> CassConfig:
    """CassConfig from parameter values. Only values that differ from the
    defaults are passed on, so a preset fills in everything the user left at
    its default (config.build_config: defaults < preset < given values)."""
    given = {k: v for k, v in values.items()
             if k in CONFIG_NAMES and not _same(v, DEFAULTS[k])}
    return build_config(given)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return list(a or []) == list(b or [])
    return a == b


def settings_from_values(values: Mapping[str, Any]) -> tuple[CassConfig, RuntimeParams]:
    """(segmenter config, runtime parameters); ConfigError names a bad one."""
    return config_from_values(values), runtime_from_values(values)


def prompt_set_from_values(config: CassConfig, values: Mapping[str, Any]) -> PromptSet:
    """The prompt set the prompt parameters describe. With a preset, the
    preset's classes_file / background apply unless the user changed them
    (``config`` already holds that merge); ``values`` overrides it for
    run-time changes."""
    prompts = values.get("prompts", config.prompts)
    classes_file = values.get("classes_file", config.classes_file)
    background = values.get("background_classes", config.background_classes)
    return prompt_set_from_settings(list(prompts or []), classes_file or "",
                                    list(background or []))


def check_change(current: Mapping[str, Any], changes: Mapping[str, Any]
                 ) -> tuple[RuntimeParams, PromptSet | None]:
    """Validate a run-time change of parameters. Returns the new runtime
    parameters and, when a prompt parameter changed, the new prompt set.
    Raises ConfigError / PromptError with the reason (old values stay)."""
    merged = dict(current)
    merged.update(changes)
    for name, value in changes.items():
        spec = SPECS.get(name)
        if spec is None:
            raise ConfigError(f"unknown parameter '{name}'")
        if spec.choices and value not in spec.choices:
            raise ConfigError(f"parameter '{name}' must be one of "
                              f"{', '.join(repr(c) for c in spec.choices)}, not {value!r}")
    runtime = runtime_from_values(merged)
    if changes.get("classes_file"):
        # checked even while 'prompts' wins over it: a file that cannot be
        # read is a bad value now, not a surprise when prompts are cleared
        read_classes_file(changes["classes_file"])
    prompt_set = None
    if any(n in changes for n in PROMPT_NAMES):
        prompt_set = check_prompt_set(prompt_set_from_settings(
            list(merged.get("prompts") or []), merged.get("classes_file") or "",
            list(merged.get("background_classes") or [])))
    return runtime, prompt_set


def names_prompts(prompts: Sequence[str], classes_file: str) -> bool:
    """Whether the prompt parameters ask for classes at all; when they do
    not, the node waits for prompts instead of failing."""
    return any(str(p).strip() for p in prompts) or bool(classes_file)


def check_node_change(current: Mapping[str, Any], waiting: bool, config: CassConfig,
                      changes: Mapping[str, Any]
                      ) -> tuple[RuntimeParams, PromptSet | None, CassConfig | None]:
    """A running node's parameter change, validated: (runtime, new prompt
    set or None, new segmenter config or None). ``current``: the runtime
    parameters and prompt parameters in force; ``waiting``: no prompt set
    accepted yet. ConfigError / PromptError say why not (old values stay)."""
    merged = {n: changes.get(n, current.get(n)) for n in PROMPT_NAMES}
    if waiting and not names_prompts(merged["prompts"] or [], merged["classes_file"] or ""):
        # Still no prompts asked for (e.g. background_classes set first):
        # noted, nothing to prepare, and not an error while waiting.
        others = {k: v for k, v in changes.items() if k not in PROMPT_NAMES}
        runtime, prompt_set = check_change(current, others)[0], None
    else:
        runtime, prompt_set = check_change(current, changes)
    return runtime, prompt_set, check_config_change(config, changes)


def check_config_change(config: CassConfig, changes: Mapping[str, Any]) -> CassConfig | None:
    """The segmenter configuration after a run-time change of algorithm
    parameters (None when none of ``changes`` is one). Raises ConfigError
    naming the parameter (e.g. slide_stride > slide_crop); old values stay."""
    algo = {k: coerce(k, v) for k, v in changes.items() if k in ALGORITHM_NAMES}
    if not algo:
        return None
    return config.replace(**algo).validate()


def changed_from_preset(config: CassConfig) -> dict[str, Any]:
    """Settings where the effective config differs from the declared
    defaults (to log what a preset changed)."""
    out = {}
    for name in CONFIG_NAMES:
        v = getattr(config, name)
        if not _same(v, DEFAULTS[name]):
            out[name] = v
    return out


__all__ = [
    "RuntimeParams", "ParamSpec", "PARAM_SPECS", "SPECS", "DEFAULTS", "CONFIG_NAMES",
    "RUNTIME_NAMES", "PROMPT_NAMES", "camera_name_from_topic", "camera_names_for",
    "declare_all", "read_all", "settings_from_values", "config_from_values",
    "runtime_from_values", "prompt_set_from_values", "check_change", "check_prompt_set",
    "check_config_change", "check_node_change", "names_prompts", "ALGORITHM_NAMES",
    "descriptor_for", "config_param_spec", "NODE_PARAM_SPECS", "camera_info_topic",
    "ConfigError", "PromptError",
]

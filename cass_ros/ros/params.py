"""The node's ROS parameters: declaration, reading, validation.

The one place that turns ROS parameters into the segmenter's CassConfig and
the node's RuntimeParams. The segmenter settings are cass_ros.core.config's
FIELD_NAMES with CassConfig's defaults; the runtime ones are those of
docs/ros-interface.md. config/cass.yaml lists every parameter with the default
declared here (test/ros/test_params.py compares the two).

rclpy is imported only inside the functions that need a node, so the bag
tool and the tests can use the pure parts (defaults, camera names,
validation) without a ROS context.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any
from collections.abc import Mapping, Sequence

from ..core.config import CassConfig, ConfigError, build_config, coerce
from ..core.prompts import (PromptError, PromptSet, check_prompt_set, prompt_set_from_settings,
                            read_classes_file)

TRANSPORTS = ("raw", "compressed")
QOS_CHOICES = ("best_effort", "reliable")
OUTPUT_SIZES = ("input", "model")


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
        return self

    def cameras(self) -> list[str]:
        """Camera name per image topic: ``camera_names`` or derived."""
        if self.camera_names:
            return list(self.camera_names)
        return camera_names_for(self.image_topics)


def _need(ok: bool, name: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"parameter '{name}' {why}")


def _valid_topic(topic: str) -> bool:
    # rcl's rules in short: tokens of letters, digits and '_', not starting
    # with a digit, separated by '/', optionally '~' or '/' in front.
    return bool(re.fullmatch(r"(~/|/)?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*", topic))


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


# ----------------------------------------------------------------- declarations

@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    kind: str                      # bool, int, float, str, list
    low: float | None = None       # inclusive range for int/float
    high: float | None = None
    choices: tuple[str, ...] = ()
    runtime: bool = False          # may change while the node runs

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


_BIG = 1_000_000
_C = CassConfig()

# Order = order of config/cass.yaml. Ranges are the descriptor's (rclpy
# enforces them); config.validate() adds the finer rules (slide_crop 0 or
# >= 16, logit_scale > 0 ...).
PARAM_SPECS: tuple[ParamSpec, ...] = (
    # -- model
    ParamSpec("device", _C.device, "Torch device: auto (cuda when available, else cpu), cpu, "
              "cuda or cuda:N", "str"),
    ParamSpec("precision", _C.precision, "Inference precision; auto = fp16 on CUDA, fp32 on CPU",
              "str", choices=("auto", "fp32", "fp16", "bf16")),
    ParamSpec("clip_model", _C.clip_model, "open_clip architecture of the CLIP model", "str"),
    ParamSpec("clip_weights", _C.clip_weights, "open_clip pretrained tag (openai), a checkpoint "
              "file, or 'random' (untrained: tests and benchmarks only)", "str"),
    ParamSpec("dino_model", _C.dino_model, "timm name of the DINO ViT", "str"),
    ParamSpec("dino_weights", _C.dino_weights, "'hub' (timm's pretrained download), a checkpoint "
              "file, or 'random' (untrained: tests and benchmarks only)", "str"),
    ParamSpec("weights_cache_dir", _C.weights_cache_dir, "Where hub weights are cached; empty = "
              "the libraries' default", "str"),
    # -- algorithm (docs/algorithm.md section 0); all but preset changeable at run time
    ParamSpec("preset", _C.preset, "A paper dataset configuration applied under the other "
              "values (parameters left at their defaults take the preset's); empty = none", "str",
              choices=("", "voc21", "voc20", "context60", "context59", "coco_object",
                       "coco_stuff", "cityscapes", "ade20k")),
    ParamSpec("short_side", _C.short_side, "Images are resized so their short side has this "
              "many pixels before inference", "int", 16, 8192, runtime=True),
    ParamSpec("slide_crop", _C.slide_crop, "Sliding-window crop size in pixels; 0 = whole image "
              "in one pass", "int", 0, 8192, runtime=True),
    ParamSpec("slide_stride", _C.slide_stride, "Sliding-window stride in pixels", "int", 1, 8192,
              runtime=True),
    ParamSpec("logit_scale", _C.logit_scale, "Scale of the logits before the softmax over "
              "class names", "float", 0.0, 1000.0, runtime=True),
    ParamSpec("prob_threshold", _C.prob_threshold, "Pixels whose best class probability is "
              "below this become background (0)", "float", 0.0, 1.0, runtime=True),
    ParamSpec("global_semantics_weight", _C.global_semantics_weight, "Blend (beta) of the "
              "image-level similarity (object presence prior) into every patch's logits", "float",
              0.0, 1.0, runtime=True),
    ParamSpec("mean_vector_weight", _C.mean_vector_weight, "How far (alpha) a text embedding is "
              "pulled toward its two most similar patches", "float", 0.0, 1.0, runtime=True),
    ParamSpec("cluster_threshold", _C.cluster_threshold, "Cosine-distance threshold cutting the "
              "Ward dendrogram of the class-name embeddings", "float", 0.0, 10.0, runtime=True),
    ParamSpec("gaussian_std", _C.gaussian_std, "Std (in patches) of the Gaussian spatial "
              "prior added to the fused attention", "float", 0.0, 1000.0, runtime=True),
    ParamSpec("k_eigen", _C.k_eigen, "Eigenvalues per head compared in the spectral "
              "head matching", "int", 1, 4096, runtime=True),
    ParamSpec("low_rank", _C.low_rank, "Rank kept of each DINO key graph", "int",
              1, 4096, runtime=True),
    ParamSpec("fusion_weight", _C.fusion_weight, "Weight (lambda) of the DINO graph in the "
              "fusion", "float", 0.0, 1000.0, runtime=True),
    ParamSpec("eigenvalue_scaling", _C.eigenvalue_scaling, "Rescale the kept DINO eigenvalues from "
              "[min, max] to [0.5 min, 1.5 max]", "bool", runtime=True),
    ParamSpec("attention", _C.attention, "Attention fusion strategy", "str",
              choices=("spectral", "sequential", "vanilla"), runtime=True),
    # -- prompts (changeable at run time)
    ParamSpec("prompts", list(_C.prompts), "Classes to segment, one per element; '|' separates "
              "synonyms (person|pedestrian). Wins over classes_file", "list", runtime=True),
    ParamSpec("classes_file", _C.classes_file, "Class file: one class per line, ',' or '|' "
              "between synonyms (used when prompts is empty)", "str", runtime=True),
    ParamSpec("background_classes", list(_C.background_classes), "Names that map to label 0 "
              "(background)", "list", runtime=True),
    # -- node
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
)

SPECS: dict[str, ParamSpec] = {s.name: s for s in PARAM_SPECS}
DEFAULTS: dict[str, Any] = {s.name: s.default for s in PARAM_SPECS}
RUNTIME_NAMES = tuple(f.name for f in fields(RuntimeParams))
PROMPT_NAMES = ("prompts", "classes_file", "background_classes")
# Segmenter settings the node exposes; crop_global_vector stays preset-internal.
CONFIG_NAMES = tuple(s.name for s in PARAM_SPECS if s.name not in RUNTIME_NAMES)
# Algorithm settings a running node takes (Segmenter.with_config); the model
# settings and the preset need a restart.
ALGORITHM_NAMES = tuple(s.name for s in PARAM_SPECS
                        if s.runtime and s.name in CONFIG_NAMES and s.name not in PROMPT_NAMES)


def descriptor_for(spec: ParamSpec) -> Any:
    """The rcl_interfaces ParameterDescriptor of a parameter."""
    from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                    ParameterType)

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
    from rclpy.exceptions import (InvalidParameterTypeException,
                                  InvalidParameterValueException)
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
    "check_config_change", "ALGORITHM_NAMES",
    "descriptor_for",
    "ConfigError", "PromptError",
]

"""The segmenter's configuration: one dataclass, the paper's presets, and
readers for flat YAML files and ROS parameter files.

Defaults follow the VOC21 configuration of CASS (whole image, probability
threshold 0.1, a background class), since a robot asks for objects; the
presets reproduce the per-dataset columns of docs/algorithm.md section 0
(values from the authors' published configs, MICV-yonsei/CASS ``configs/``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from collections.abc import Mapping

# The paper's VOC21 background line (docs/algorithm.md 5.5).
VOC_BACKGROUND = (
    "sky, wall, tree, wood, grass, road, sea, river, mountain, sands, desk, bed, "
    "building, cloud, lamp, door, window, wardrobe, ceiling, shelf, curtain, "
    "stair, floor, hill, rail, fence"
)

ATTENTION_STRATEGIES = ("spectral", "sequential", "vanilla")
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "mixed")
# torch.compile modes for the ViT trunks (docs/ros-interface.md, Model: compile).
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
# CPU kernels of the ViTs (docs/ros-interface.md, Model: cpu_kernels);
# core.cpu_kernels says why.
CPU_KERNELS = ("auto", "onednn", "torch")
# The device grammar (docs/ros-interface.md, Model): parse_device reads it.
DEVICE_GRAMMAR = "auto, cpu, cuda or cuda:N"


class ConfigError(ValueError):
    """A configuration value is unusable; the message names the parameter."""


# Per-dataset settings of the published configurations (docs/algorithm.md
# section 0). Each class file named here ships in cass_ros/classes/.
PRESETS: dict[str, dict[str, Any]] = {
    "voc21": dict(slide_crop=0, prob_threshold=0.1, global_semantics_weight=0.1,
                  mean_vector_weight=0.03, cluster_threshold=0.10, classes_file="cls_voc21.txt"),
    "voc20": dict(slide_crop=224, slide_stride=112, prob_threshold=0.0,
                  global_semantics_weight=0.4, mean_vector_weight=0.02,
                  cluster_threshold=0.10, eigenvalue_scaling=False,
                  classes_file="cls_voc20.txt"),
    "context60": dict(slide_crop=224, slide_stride=112, prob_threshold=0.1,
                      global_semantics_weight=0.25, mean_vector_weight=0.04,
                      cluster_threshold=0.09, classes_file="cls_context60.txt"),
    "context59": dict(slide_crop=224, slide_stride=112, prob_threshold=0.0,
                      global_semantics_weight=0.25, mean_vector_weight=0.04,
                      cluster_threshold=0.09, classes_file="cls_context59.txt"),
    "coco_object": dict(slide_crop=224, slide_stride=112, prob_threshold=0.1,
                        global_semantics_weight=0.25, mean_vector_weight=0.01,
                        cluster_threshold=0.10, classes_file="cls_coco_object.txt"),
    "coco_stuff": dict(slide_crop=224, slide_stride=112, prob_threshold=0.0,
                       global_semantics_weight=0.2, mean_vector_weight=0.02,
                       cluster_threshold=0.02, classes_file="cls_coco_stuff.txt"),
    "cityscapes": dict(short_side=560, slide_crop=224, slide_stride=112, prob_threshold=0.0,
                       global_semantics_weight=0.1, mean_vector_weight=0.03,
                       cluster_threshold=0.14, eigenvalue_scaling=False,
                       crop_global_vector=True, classes_file="cls_cityscapes.txt"),
    "ade20k": dict(slide_crop=224, slide_stride=112, prob_threshold=0.0,
                   global_semantics_weight=0.3, mean_vector_weight=0.05,
                   cluster_threshold=0.06, classes_file="cls_ade20k.txt"),
}


# ----------------------------------------------------------------- setting groups

# The groups of docs/ros-interface.md, Parameters: MODEL settings select or
# place the networks (a new Segmenter, a node restart); ALGORITHM settings
# (docs/algorithm.md section 0) and PROMPTS change on running models.
MODEL = "model"
ALGORITHM = "algorithm"
PROMPTS = "prompts"
GROUPS = (MODEL, ALGORITHM, PROMPTS)


@dataclass(frozen=True)
class SettingInfo:
    """What a CassConfig field is, besides its name, type and default: the
    one description of it that the ROS parameters, config/cass.yaml and the
    tests read (docs/ros-interface.md, Parameters)."""

    group: str                     # MODEL, ALGORITHM or PROMPTS
    description: str
    low: float | None = None       # inclusive range of the ROS descriptor (rclpy
    high: float | None = None      # enforces it); validate() adds the finer rules
    choices: tuple[str, ...] = ()  # the only values allowed, if any
    runtime: bool = True           # a running node may change it
    node_parameter: bool = True    # cass_node declares it as a ROS parameter


def _setting(default: Any = dataclasses.MISSING, *, group: str, description: str,
             factory: Any = dataclasses.MISSING, low: float | None = None,
             high: float | None = None, choices: tuple[str, ...] = (),
             runtime: bool | None = None, node_parameter: bool = True) -> Any:
    """A CassConfig field carrying its SettingInfo. ``runtime`` defaults by
    group: model settings need a restart, the others do not."""
    info = SettingInfo(group=group, description=description, low=low, high=high,
                       choices=choices, runtime=group != MODEL if runtime is None else runtime,
                       node_parameter=node_parameter)
    return field(default=default, default_factory=factory, metadata={"setting": info})


def _model(default: str, description: str, **kw: Any) -> Any:
    return _setting(default, group=MODEL, description=description, **kw)


def _algorithm(default: Any, description: str, **kw: Any) -> Any:
    return _setting(default, group=ALGORITHM, description=description, **kw)


def _voc_background() -> list[str]:
    return [n.strip() for n in VOC_BACKGROUND.split(",")]


@dataclass
class CassConfig:
    """Every setting of the segmenter, under the names of docs/ros-interface.md.

    Each field's metadata holds its SettingInfo (``setting_info``): group,
    description, ROS range and choices, whether it changes at run time.
    """

    clip_model: str = _model("ViT-B-16", "open_clip architecture of the CLIP model")
    clip_weights: str = _model(
        "openai", "open_clip pretrained tag (openai), a checkpoint file, or 'random' "
        "(untrained: tests and benchmarks only)")
    dino_model: str = _model("vit_base_patch8_224.dino", "timm name of the DINO ViT")
    dino_weights: str = _model(
        "hub", "'hub' (timm's pretrained download), a checkpoint file, or 'random' "
        "(untrained: tests and benchmarks only)")
    weights_cache_dir: str = _model(
        "", "Where hub weights are cached; empty = the libraries' default")
    device: str = _model(
        "auto", "Torch device: auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    precision: str = _model(
        "auto", "Inference precision; auto = fp16 on CUDA, fp32 on CPU; mixed = the ViT trunks "
        "in bf16 (fp16 on CUDA) except their last blocks and the spectral step's inputs",
        choices=PRECISIONS)
    compile: str = _model(
        "none", "torch.compile the ViT trunks: none (eager), default, reduce-overhead (CUDA "
        "graphs on CUDA) or max-autotune; each new input size compiles first (tens of seconds; the "
        "node warms up at start-up)", choices=COMPILE_MODES)
    cpu_kernels: str = _model(
        "auto", "On the CPU in fp32: which kernels run the linear layers of the ViTs and the "
        "text tower (the same fp32 arithmetic): auto times torch's and oneDNN's at start-up and "
        "takes the faster, onednn or torch force one; all but torch keep freed memory in the C "
        "heap", choices=CPU_KERNELS)
    # Algorithm (docs/algorithm.md section 0; VOC21 profile). The preset is
    # applied once, under the given values, when the config is built: a
    # running node cannot re-apply it.
    preset: str = _algorithm(
        "", "A paper dataset configuration applied under the other values (parameters "
        "left at their defaults take the preset's); empty = none",
        choices=("", *PRESETS), runtime=False)
    short_side: int = _algorithm(
        336, "Images are resized so their short side has this many pixels before inference",
        low=16, high=8192)
    slide_crop: int = _algorithm(
        0, "Sliding-window crop size in pixels; 0 = whole image in one pass", low=0, high=8192)
    slide_stride: int = _algorithm(112, "Sliding-window stride in pixels", low=1, high=8192)
    logit_scale: float = _algorithm(
        40.0, "Scale of the logits before the softmax over class names", low=0.0, high=1000.0)
    prob_threshold: float = _algorithm(
        0.1, "Pixels whose best class probability is below this become background (0)",
        low=0.0, high=1.0)
    global_semantics_weight: float = _algorithm(
        0.1, "Blend (beta) of the image-level similarity (object presence prior) into every "
        "patch's logits", low=0.0, high=1.0)
    mean_vector_weight: float = _algorithm(
        0.03, "How far (alpha) a text embedding is pulled toward its two most similar patches",
        low=0.0, high=1.0)
    cluster_threshold: float = _algorithm(
        0.10, "Cosine-distance threshold cutting the Ward dendrogram of the class-name "
        "embeddings", low=0.0, high=10.0)
    gaussian_std: float = _algorithm(
        5.0, "Std (in patches) of the Gaussian spatial prior added to the fused attention",
        low=0.0, high=1000.0)
    k_eigen: int = _algorithm(
        20, "Eigenvalues per head compared in the spectral head matching", low=1, high=4096)
    low_rank: int = _algorithm(10, "Rank kept of each DINO key graph", low=1, high=4096)
    fusion_weight: float = _algorithm(
        10.0, "Weight (lambda) of the DINO graph in the fusion", low=0.0, high=1000.0)
    eigenvalue_scaling: bool = _algorithm(
        True, "Rescale the kept DINO eigenvalues from [min, max] to [0.5 min, 1.5 max]")
    attention: str = _algorithm("spectral", "Attention fusion strategy",
                                choices=ATTENTION_STRATEGIES)
    # A preset behaviour without a parameter in the reference (Cityscapes),
    # hence no ROS parameter either (docs/algorithm.md 4.1).
    crop_global_vector: bool = _algorithm(
        False, "In sliding-window mode, use each crop's own class token for the presence "
        "prior instead of the whole image's", node_parameter=False)
    # Prompts (docs/algorithm.md 1.1, 5.5)
    prompts: list[str] = _setting(
        group=PROMPTS, factory=list, description="Classes to segment, one per element; '|' "
        "separates synonyms (person|pedestrian). Wins over classes_file")
    classes_file: str = _setting(
        "", group=PROMPTS, description="Class file: one class per line, ',' or '|' between "
        "synonyms (used when prompts is empty)")
    background_classes: list[str] = _setting(
        group=PROMPTS, factory=_voc_background,
        description="Names that map to label 0 (background)")

    def validate(self) -> "CassConfig":
        """Raise ConfigError naming the first bad parameter; return self."""
        _check(self.short_side >= 16, "short_side", "must be >= 16")
        _check(self.slide_crop == 0 or self.slide_crop >= 16, "slide_crop",
               "must be 0 (whole image) or >= 16")
        _check(self.slide_stride >= 1, "slide_stride", "must be >= 1")
        # mmseg's grid leaves pixels uncovered when the stride exceeds the
        # crop; the averaging of 5.2 needs every pixel covered.
        _check(self.slide_crop == 0 or self.slide_stride <= self.slide_crop, "slide_stride",
               "must be <= slide_crop (crops must cover every pixel)")
        _check(self.logit_scale > 0, "logit_scale", "must be > 0")
        _check(0.0 <= self.prob_threshold <= 1.0, "prob_threshold", "must be in [0, 1]")
        _check(0.0 <= self.global_semantics_weight <= 1.0, "global_semantics_weight",
               "must be in [0, 1]")
        _check(0.0 <= self.mean_vector_weight <= 1.0, "mean_vector_weight", "must be in [0, 1]")
        _check(self.cluster_threshold >= 0.0, "cluster_threshold", "must be >= 0")
        _check(self.gaussian_std > 0, "gaussian_std", "must be > 0")
        _check(self.k_eigen >= 1, "k_eigen", "must be >= 1")
        _check(self.low_rank >= 1, "low_rank", "must be >= 1")
        _check(self.fusion_weight >= 0, "fusion_weight", "must be >= 0")
        _check(self.attention in ATTENTION_STRATEGIES, "attention",
               f"must be one of {', '.join(ATTENTION_STRATEGIES)}, not {self.attention!r}")
        _check(self.precision in PRECISIONS, "precision",
               f"must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        _check(self.compile in COMPILE_MODES, "compile",
               f"must be one of {', '.join(COMPILE_MODES)}, not {self.compile!r}")
        _check(self.cpu_kernels in CPU_KERNELS, "cpu_kernels",
               f"must be one of {', '.join(CPU_KERNELS)}, not {self.cpu_kernels!r}")
        _check(self.preset == "" or self.preset in PRESETS, "preset",
               f"unknown preset {self.preset!r}; known: {', '.join(sorted(PRESETS))}")
        parse_device(self.device)  # the grammar only; resolve_device asks torch
        for name in ("clip_model", "clip_weights", "dino_model", "dino_weights"):
            _check(bool(getattr(self, name)), name, "must not be empty")
        return self

    def replace(self, **changes: Any) -> "CassConfig":
        return dataclasses.replace(self, **changes)


def _check(ok: bool, name: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"parameter '{name}' {why}")


def parse_device(name: str) -> tuple[str, int | None]:
    """The device grammar (docs/ros-interface.md, Model): ``auto``, ``cpu``,
    ``cuda`` or ``cuda:N`` -> (kind, N or None). ConfigError names the
    ``device`` parameter for anything else. Whether the device exists is
    segmenter.resolve_device's question (it needs torch)."""
    if name in ("auto", "cpu", "cuda"):
        return name, None
    if name.startswith("cuda:") and name[5:].isdigit():
        return "cuda", int(name[5:])
    raise ConfigError(f"parameter 'device' must be {DEVICE_GRAMMAR}, not {name!r}")


CLASSES_DIR = Path(__file__).resolve().parent / "classes"

# Settings a user may give (YAML, --set, ROS parameters).
FIELD_NAMES = tuple(f.name for f in fields(CassConfig))
_FIELD_TYPES = {f.name: f.type for f in fields(CassConfig)}
SETTINGS: dict[str, SettingInfo] = {f.name: f.metadata["setting"] for f in fields(CassConfig)}


def setting_info(name: str) -> SettingInfo:
    """The SettingInfo of CassConfig field ``name`` (KeyError if none)."""
    return SETTINGS[name]


def setting_type(name: str) -> str:
    """The annotation of field ``name`` as written: bool, int, float, str or list[str]."""
    return _FIELD_TYPES[name]


def group_names(group: str) -> tuple[str, ...]:
    """The fields of ``group`` (MODEL, ALGORITHM, PROMPTS) in field order."""
    if group not in GROUPS:
        raise ValueError(f"unknown setting group {group!r}; known: {', '.join(GROUPS)}")
    return tuple(name for name, info in SETTINGS.items() if info.group == group)


def preset_values(name: str) -> dict[str, Any]:
    """The settings preset ``name`` implies, class file resolved to a path.

    Presets whose class file begins with a background line keep it as
    class 0; the others have no background names (docs/algorithm.md 5.5).
    """
    if name not in PRESETS:
        raise ConfigError(f"parameter 'preset': unknown preset {name!r}; "
                          f"known: {', '.join(sorted(PRESETS))}")
    values = dict(PRESETS[name])
    values["classes_file"] = str(CLASSES_DIR / values["classes_file"])
    values["background_classes"] = []
    values["prompts"] = []
    values["preset"] = name
    return values


def coerce(name: str, value: Any) -> Any:
    """Convert ``value`` (YAML scalar, CLI string, ROS parameter) to the type
    of setting ``name``; raise ConfigError naming it when that fails."""
    if name not in _FIELD_TYPES:
        raise ConfigError(f"unknown parameter '{name}'; known: {', '.join(FIELD_NAMES)}")
    kind = _FIELD_TYPES[name]
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind == "str":
            return "" if value is None else str(value)
        # list[str]: a YAML list, or a string of comma-separated items
        if value is None:
            return []
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return [str(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(f"parameter '{name}' expects {kind}, got {value!r}") from None


def build_config(*layers: Mapping[str, Any]) -> CassConfig:
    """Merge layers of settings (later wins) over the defaults, apply the
    preset named in them underneath, validate.

    Precedence: defaults < preset < layers in order. A preset given in any
    layer is applied first, so explicit settings always override it.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            merged[key] = coerce(key, value)
    values: dict[str, Any] = {}
    preset = merged.get("preset", "")
    if preset:
        values.update(preset_values(preset))
    values.update(merged)
    return CassConfig(**values).validate()


def read_settings_file(path: str | os.PathLike) -> dict[str, Any]:
    """Settings from a YAML file: a flat mapping of parameter names, or a ROS
    parameters file (``<node>: ros__parameters: {...}``, e.g. config/cass.yaml).

    Keys that are not segmenter settings (the node's runtime parameters such
    as ``max_rate_hz``) are returned too; ``split_settings`` separates them.
    """
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping")
    # ROS parameter file: take the first node section (or /** wildcard).
    for value in data.values():
        if isinstance(value, dict) and "ros__parameters" in value:
            return dict(value["ros__parameters"] or {})
    return data


def split_settings(settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(segmenter settings, everything else)."""
    ours = {k: v for k, v in settings.items() if k in _FIELD_TYPES}
    rest = {k: v for k, v in settings.items() if k not in _FIELD_TYPES}
    return ours, rest

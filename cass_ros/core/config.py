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
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


class ConfigError(ValueError):
    """A configuration value is unusable; the message names the parameter."""


@dataclass
class CassConfig:
    """Every setting of the segmenter, under the names of docs/ros-interface.md."""

    # Model
    clip_model: str = "ViT-B-16"
    clip_weights: str = "openai"
    dino_model: str = "vit_base_patch8_224.dino"
    dino_weights: str = "hub"
    weights_cache_dir: str = ""
    device: str = "auto"
    precision: str = "auto"
    # Algorithm (docs/algorithm.md section 0; VOC21 profile)
    preset: str = ""
    short_side: int = 336
    slide_crop: int = 0
    slide_stride: int = 112
    logit_scale: float = 40.0
    prob_threshold: float = 0.1
    global_semantics_weight: float = 0.1
    mean_vector_weight: float = 0.03
    cluster_threshold: float = 0.10
    gaussian_std: float = 5.0
    k_eigen: int = 20
    low_rank: int = 10
    fusion_weight: float = 10.0
    eigenvalue_scaling: bool = True
    attention: str = "spectral"
    # Preset behaviour without a parameter in the reference (Cityscapes):
    # in sliding-window mode, use each crop's own class token for the
    # presence prior instead of the whole image's.
    crop_global_vector: bool = False
    # Prompts
    prompts: list[str] = field(default_factory=list)
    classes_file: str = ""
    background_classes: list[str] = field(
        default_factory=lambda: [n.strip() for n in VOC_BACKGROUND.split(",")]
    )

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
        _check(self.preset == "" or self.preset in PRESETS, "preset",
               f"unknown preset {self.preset!r}; known: {', '.join(sorted(PRESETS))}")
        dev = self.device
        ok_dev = dev in ("auto", "cpu", "cuda") or (
            dev.startswith("cuda:") and dev[5:].isdigit())
        _check(ok_dev, "device", f"must be auto, cpu, cuda or cuda:N, not {dev!r}")
        for name in ("clip_model", "clip_weights", "dino_model", "dino_weights"):
            _check(bool(getattr(self, name)), name, "must not be empty")
        return self

    def replace(self, **changes: Any) -> "CassConfig":
        return dataclasses.replace(self, **changes)


def _check(ok: bool, name: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"parameter '{name}' {why}")


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

CLASSES_DIR = Path(__file__).resolve().parent / "classes"

# Settings a user may give (YAML, --set, ROS parameters).
FIELD_NAMES = tuple(f.name for f in fields(CassConfig))
_FIELD_TYPES = {f.name: f.type for f in fields(CassConfig)}


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

"""The CASS segmenter library: plain PyTorch (torch, numpy, scipy, open_clip,
timm), no ROS and no rosbags. docs/algorithm.md describes each step; each
lives in the module named for it (config, prompts, models, preprocess,
vit_features, spectral, text, presence, segmenter, result, temporal,
visualize, prompt_session; metrics and datasets for cass_eval; agreement for
every comparison of runs whose arithmetic differs; precision for the
precision modes; vit_blocks, cpu_kernels and c_heap for how the trunks
compute on each device; depth and mapping for 3D and the mappers' outputs).
Subpackages: queries (the segmenter's image and prompt halves, describe,
vocabulary, dense features and their pooling) and objects (instances and
tracks).

The public API, e.g.::

    from cass_ros.core import Segmenter, build_config, prompt_set_from_settings

Names resolve on first use, so that importing a torch-free module of this
package (prompts, config: the launch file does) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CassConfig": "config", "ConfigError": "config", "build_config": "config",
    "read_settings_file": "config", "PRESETS": "config",
    "PromptSet": "prompts", "PromptError": "prompts", "parse_prompt_text": "prompts",
    "build_prompt_set": "prompts", "prompt_set_from_settings": "prompts",
    "read_classes_file": "prompts", "check_prompt_set": "prompts",
    "PromptSession": "prompt_session", "ActivePrompts": "prompt_session",
    "CassModels": "models", "WeightsError": "models", "load_models": "models",
    "save_tiny_random_checkpoints": "models",
    "Segmenter": "segmenter", "PreparedPrompts": "prepared_prompts",
    "SegmentationResult": "result",
    "TemporalParams": "temporal", "TemporalStream": "temporal", "StreamFrame": "temporal",
    "overlay": "visualize", "palette": "visualize",
    "confusion_matrix": "metrics", "metrics_from_confusion": "metrics",
    "load_split": "datasets", "load_custom": "datasets", "DatasetError": "datasets",
    "DATASETS": "datasets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cass_ros.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

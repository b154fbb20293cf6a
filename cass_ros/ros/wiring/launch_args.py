"""Launch arguments -> cass_node parameter overrides (pure, ROS-free).

launch/cass.launch.py passes its arguments through ``node_overrides``; the
subprocess tests build their ``-p name:=value`` command lines with
``ros_args`` from the same dictionary, so the launch path and the tested
start-up path set the same parameters the same way.
"""

from __future__ import annotations

import json
from typing import Any

from ...core.prompts import parse_prompt_text

LAUNCH_ARGUMENTS: dict[str, str] = {
    "params_file": "Parameter file (default: the package's config/cass.yaml)",
    "image_topics": "Camera image topics, comma-separated (empty: the parameter file's)",
    "image_topic": "One camera image topic (added to image_topics)",
    "prompts": "Classes, ',' or ';' between classes, '|' between synonyms "
               "(empty: the parameter file's)",
    "device": "auto, cpu, cuda or cuda:N (empty: the parameter file's)",
    "namespace": "Namespace of the node and its cass/... topics",
    "use_sim_time": "Use /clock (true/false)",
    "managed": "Start the managed (lifecycle) node cass_lifecycle_node instead of cass_node "
               "(true/false)",
    "autostart": "With managed:=true, configure and activate it once started (true/false)",
    "depth_topics": "Aligned depth image topic per image topic, comma-separated in "
                    "image_topics' order; an empty entry: no depth for that camera "
                    "(empty: the parameter file's)",
}


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.replace(";", ",").split(",") if t.strip()]


def node_overrides(image_topics: str = "", image_topic: str = "", prompts: str = "",
                   device: str = "", use_sim_time: str | bool = False,
                   depth_topics: str = "") -> dict[str, Any]:
    """Parameters that the launch arguments set (empty arguments set none,
    so the parameter file decides). Raises PromptError for unusable prompt
    text, ValueError for a use_sim_time that is not a bool."""
    out: dict[str, Any] = {}
    topics = _split(image_topics) + _split(image_topic)
    if topics:
        out["image_topics"] = list(dict.fromkeys(topics))
    if prompts.strip():
        out["prompts"] = ["|".join(names) for names in parse_prompt_text(prompts)]
    if device.strip():
        out["device"] = device.strip()
    if depth_topics.strip():
        # empty entries kept: they line the depth topics up with the cameras
        out["depth_topics"] = [t.strip() for t in depth_topics.split(",")]
    out["use_sim_time"] = launch_flag("use_sim_time", use_sim_time)
    return out


def launch_flag(name: str, value: str | bool) -> bool:
    """A true/false launch argument (also 1/0; empty is false); ValueError
    naming the argument otherwise."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", ""):
        raise ValueError(f"{name} must be true or false, not {value!r}")
    return text in ("true", "1")


def ros_args(overrides: dict[str, Any]) -> list[str]:
    """``-p name:=value`` arguments (after ``--ros-args``) for ``overrides``;
    values are written as YAML (JSON is YAML), as the rcl argument parser
    reads them."""
    args: list[str] = []
    for name, value in overrides.items():
        args += ["-p", f"{name}:={json.dumps(value)}"]
    return args

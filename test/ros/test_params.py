"""The node's parameters: config/cass.yaml holds every one with the
declared default, rcl reads that file, the descriptors carry descriptions
and ranges, presets merge as documented, run-time checks give reasons, and
camera names and launch arguments map as the interface says."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from node_harness import CONFIG, ros_available

from cass_ros.ros import params as node_params
from cass_ros.core import config as core_config
from cass_ros.core.config import CassConfig, ConfigError, read_settings_file
from cass_ros.core.prompts import PromptError
from cass_ros.ros.wiring.launch_args import node_overrides, ros_args


def test_yaml_holds_every_parameter_with_the_declared_default() -> None:
    settings = read_settings_file(CONFIG)
    assert set(settings) == set(node_params.DEFAULTS)
    for name, default in node_params.DEFAULTS.items():
        assert settings[name] == default, name
        assert type(settings[name]) is type(default), name


def test_yaml_comments_every_parameter() -> None:
    lines = CONFIG.read_text().splitlines()
    for name in node_params.DEFAULTS:
        i = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{name}:"))
        assert lines[i - 1].strip().startswith("#"), f"{name} has no comment"


def test_parameters_are_the_config_fields_and_the_runtime_fields() -> None:
    config_fields = {f.name for f in dataclasses.fields(CassConfig)} - {"crop_global_vector"}
    runtime_fields = {f.name for f in dataclasses.fields(node_params.RuntimeParams)}
    assert set(node_params.DEFAULTS) == config_fields | runtime_fields
    defaults = CassConfig()
    for name in config_fields:
        assert node_params.DEFAULTS[name] == getattr(defaults, name), name
    rt = node_params.RuntimeParams()
    for name in runtime_fields:
        value = getattr(rt, name)
        assert node_params.DEFAULTS[name] == (list(value) if isinstance(value, tuple) else value)


def test_every_numeric_parameter_has_a_range_and_every_one_a_description() -> None:
    for spec in node_params.PARAM_SPECS:
        assert spec.description, spec.name
        if spec.kind in ("int", "float"):
            assert spec.low is not None and spec.high is not None, spec.name
            assert spec.low <= spec.default <= spec.high, spec.name
        if spec.choices:
            assert spec.default in spec.choices, spec.name


def test_yaml_lists_the_parameters_in_declaration_order() -> None:
    assert list(read_settings_file(CONFIG)) == [s.name for s in node_params.PARAM_SPECS]


def test_segmenter_parameters_are_generated_from_the_config_fields() -> None:
    defaults = CassConfig()
    kinds = {"bool": "bool", "int": "int", "float": "float", "str": "str", "list[str]": "list"}
    types = {f.name: f.type for f in dataclasses.fields(CassConfig)}
    for name in node_params.CONFIG_NAMES:
        spec, info = node_params.SPECS[name], core_config.setting_info(name)
        value = getattr(defaults, name)
        assert spec.default == value and type(spec.default) is type(value), name
        assert spec.kind == kinds[types[name]], name
        assert (spec.description, spec.low, spec.high, spec.choices, spec.runtime) == (
            info.description, info.low, info.high, info.choices, info.runtime), name
    assert node_params.SPECS["precision"].choices == core_config.PRECISIONS
    assert node_params.SPECS["attention"].choices == core_config.ATTENTION_STRATEGIES
    assert node_params.SPECS["preset"].choices == ("", *core_config.PRESETS)


def test_a_changed_setting_info_changes_the_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    info = core_config.setting_info("k_eigen")
    monkeypatch.setitem(core_config.SETTINGS, "k_eigen", dataclasses.replace(
        info, description="changed", high=99, runtime=False))
    spec = node_params.config_param_spec("k_eigen")
    assert (spec.description, spec.high, spec.runtime) == ("changed", 99, False)


def test_parameter_groups_are_the_config_groups() -> None:
    prompt_names, algorithm_names = node_params.PROMPT_NAMES, node_params.ALGORITHM_NAMES
    assert prompt_names == core_config.group_names(core_config.PROMPTS)
    assert algorithm_names == tuple(n for n in core_config.group_names(core_config.ALGORITHM)
                                    if n not in ("preset", "crop_global_vector"))
    assert set(node_params.CONFIG_NAMES) == set(core_config.FIELD_NAMES) - {"crop_global_vector"}
    assert not any(node_params.SPECS[n].runtime for n in core_config.group_names(core_config.MODEL))
    # the node's own parameters: RuntimeParams' fields with its defaults, last
    specs = node_params.PARAM_SPECS
    assert [s.name for s in node_params.NODE_PARAM_SPECS] == list(node_params.RUNTIME_NAMES)
    assert specs == (*(node_params.SPECS[n] for n in node_params.CONFIG_NAMES),
                     *node_params.NODE_PARAM_SPECS)


@pytest.mark.skipif(ros_available() is not None, reason=ros_available() or "")
def test_rcl_reads_the_yaml_and_declared_values_equal_it(ros_domain: int) -> None:
    import rclpy
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain)
    try:
        node = rclpy.create_node("cass_node", context=ctx, namespace="/params_test",
                                 cli_args=["--ros-args", "--params-file", str(CONFIG)])
        node_params.declare_all(node)
        assert node_params.read_all(node) == node_params.DEFAULTS
        for spec in node_params.PARAM_SPECS:
            d = node.describe_parameter(spec.name)
            assert d.description == spec.description
            assert d.read_only == (not spec.runtime)
            if spec.kind == "int":
                assert d.integer_range[0].from_value == spec.low
            if spec.kind == "float":
                assert d.floating_point_range[0].to_value == spec.high
        # and without the file the same defaults
        bare = rclpy.create_node("cass_bare", context=ctx, namespace="/params_test")
        node_params.declare_all(bare)
        assert node_params.read_all(bare) == node_params.DEFAULTS
        # a bad value on the command line names the parameter
        for arg, name in (("short_side:=8", "short_side"), ("color_alpha:=1", "color_alpha"),
                          ("prompts:=3", "prompts")):
            bad = rclpy.create_node("cass_bad", context=ctx, namespace="/params_test",
                                    cli_args=["--ros-args", "-p", arg])
            with pytest.raises(ConfigError, match=f"'{name}'"):
                node_params.declare_all(bad)
            bad.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)


def test_preset_fills_what_was_left_at_its_default() -> None:
    values = dict(node_params.DEFAULTS, preset="cityscapes")
    config = node_params.config_from_values(values)
    assert config.short_side == 560 and config.slide_crop == 224
    assert config.crop_global_vector is True
    assert config.classes_file.endswith("cls_cityscapes.txt")
    assert config.background_classes == []
    values["short_side"] = 448
    values["prompts"] = ["road", "car"]
    config = node_params.config_from_values(values)
    assert config.short_side == 448 and config.prompts == ["road", "car"]
    assert node_params.changed_from_preset(config)["short_side"] == 448


def test_startup_validation_names_the_parameter() -> None:
    def bad(**changes: Any) -> str:
        with pytest.raises(ConfigError) as e:
            node_params.settings_from_values(dict(node_params.DEFAULTS, **changes))
        return str(e.value)

    assert "'device'" in bad(device="gpu")
    assert "'slide_crop'" in bad(slide_crop=8)
    assert "'image_transport'" in bad(image_transport="theora")
    assert "'image_qos'" in bad(image_qos="sometimes")
    assert "'camera_names'" in bad(camera_names=["a", "b"])
    assert "'camera_names'" in bad(camera_names=["1st"])
    assert "'image_topics'" in bad(image_topics=[])
    assert "'image_topics'" in bad(image_topics=["/a b"])
    assert "'output_size'" in bad(output_size="huge")


def _current() -> dict[str, Any]:
    return dict(dataclasses.asdict(node_params.RuntimeParams()), prompts=["car"],
                classes_file="", background_classes=["sky"])


def test_runtime_changes_are_checked() -> None:
    rt, ps = node_params.check_change(_current(), {"color_alpha": 0.25, "min_pixels": 9})
    assert (rt.color_alpha, rt.min_pixels, ps) == (0.25, 9, None)
    rt, ps = node_params.check_change(_current(), {"prompts": ["dog|puppy", "cat"]})
    assert ps is not None and ps.class_names == ["background", "dog", "cat"]
    assert ps.background == ("sky",)
    for changes, word in (({"color_alpha": 2.0}, "color_alpha"),
                          ({"output_size": "x"}, "output_size"),
                          ({"max_rate_hz": -1.0}, "max_rate_hz"),
                          ({"prompts": []}, "prompts"),
                          ({"prompts": ["ok", "bad\x07"]}, "control"),
                          ({"prompts": ["x" * 500]}, "longer"),
                          ({"classes_file": "/nonexistent"}, "classes_file"),
                          ({"no_such": 1}, "unknown")):
        with pytest.raises((ConfigError, PromptError), match=word):
            node_params.check_change(_current(), changes)


@pytest.mark.parametrize("topic,name", [
    ("/front/image_raw", "front"),
    ("/camera/image_raw", "camera"),
    ("/robot/left/image_rect_color", "left"),
    ("/front/image_raw/compressed", "front"),
    ("front/image", "front"),
    ("/image_raw", "image_raw"),
    ("/cam-1/image_raw", "cam_1"),
    ("/3d/image_raw", "cam_3d"),
])
def test_camera_name_from_topic(topic: str, name: str) -> None:
    assert node_params.camera_name_from_topic(topic) == name


def test_camera_names_are_unique() -> None:
    topics = ["/a/cam/image_raw", "/b/cam/image_raw", "/c/cam/image_raw"]
    assert node_params.camera_names_for(topics) == ["cam", "cam_2", "cam_3"]
    rt = node_params.RuntimeParams(image_topics=("/x/image_raw",), camera_names=("left",))
    assert rt.cameras() == ["left"]


def test_launch_arguments_become_parameters() -> None:
    assert node_overrides() == {"use_sim_time": False}
    out = node_overrides(image_topics="/a/image_raw, /b/image_raw", image_topic="/c/image_raw",
                         prompts="person|pedestrian, forklift; pallet", device="cuda:0",
                         use_sim_time="true")
    assert out == {"image_topics": ["/a/image_raw", "/b/image_raw", "/c/image_raw"],
                   "prompts": ["person|pedestrian", "forklift", "pallet"],
                   "device": "cuda:0", "use_sim_time": True}
    with pytest.raises(ValueError):
        node_overrides(use_sim_time="maybe")
    # depth topics line up with the cameras: an empty entry is a camera without depth
    depth = node_overrides(image_topics="/a/image_raw, /b/image_raw",
                           depth_topics=", /b/depth/image_raw")
    assert depth["depth_topics"] == ["", "/b/depth/image_raw"]
    rt = node_params.runtime_from_values(depth)
    assert rt.depth_inputs()[0] is None and rt.depth_inputs()[1][0] == "/b/depth/image_raw"
    args = ros_args({"prompts": ["a|b", "c"], "short_side": 64, "device": "cpu"})
    assert args == ["-p", 'prompts:=["a|b", "c"]', "-p", "short_side:=64", "-p", 'device:="cpu"']


def test_temporal_parameters_give_the_stream_parameters() -> None:
    from cass_ros.core.temporal import TemporalParams

    assert node_params.RuntimeParams().temporal() == TemporalParams()
    assert not node_params.RuntimeParams().temporal().active
    rt = node_params.runtime_from_values(dict(
        node_params.DEFAULTS, temporal_smoothing=0.6, temporal_reset_gap_s=0.25,
        temporal_present_on_frames=3, temporal_present_off_frames=2))
    assert rt.temporal() == TemporalParams(0.6, 0.25, 3, 2)
    rt, _ = node_params.check_change(_current(), {"temporal_smoothing": 0.3})
    assert rt.temporal().smoothing == 0.3 and node_params.SPECS["temporal_smoothing"].runtime
    for changes in ({"temporal_smoothing": 1.0}, {"temporal_reset_gap_s": 0.0},
                    {"temporal_present_on_frames": 0}, {"temporal_present_off_frames": 0}):
        (name,) = changes
        with pytest.raises(ConfigError, match=f"'{name}'"):
            node_params.check_change(_current(), changes)
        with pytest.raises(ConfigError, match=f"'{name}'"):
            node_params.settings_from_values(dict(node_params.DEFAULTS, **changes))


def test_a_parameter_that_needs_another_is_named_when_set_alone() -> None:
    """publish_instances without instances publishes nothing (issue 22): one
    line names it and what it needs; nothing is said at the defaults, with
    the need met, or for a parameter left at its default."""
    assert node_params.idle_settings(dict(node_params.DEFAULTS)) == []
    lines = node_params.idle_settings(dict(node_params.DEFAULTS, publish_instances=True))
    assert lines == ["parameter 'publish_instances' is set (True) but does nothing without "
                     "instances: true"]
    assert node_params.idle_settings(dict(node_params.DEFAULTS, publish_instances=True, instances=True)) == []
    assert node_params.idle_settings({"publish_instances": True}) == lines  # missing = default
    depth = node_params.idle_settings(dict(node_params.DEFAULTS, cloud_stride=8, detections_per="track",
                                           track_max_distance_m=2.0))
    assert [line.split("'")[1] for line in depth] == ["track_max_distance_m", "detections_per",
                                                      "cloud_stride"]
    assert depth[-1].endswith("does nothing without depth_topics")
    assert depth[0].endswith("without instances: true and depth_topics")
    assert node_params.idle_settings(dict(node_params.DEFAULTS, cloud_stride=8, depth_topics=["/d"])) == []
    assert node_params.idle_settings(dict(node_params.DEFAULTS, cloud_stride=8, depth_topics=[""])) != []
    # every need names a known condition, and every condition is used
    needs = {s.needs for s in node_params.NODE_PARAM_SPECS if s.needs}
    assert needs == set(node_params.NEEDS)

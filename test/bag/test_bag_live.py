"""The sample bag played into a running cass_node over DDS (the subprocess
path: where launch_pytest exists the same scenario would go through
cass.launch.py; it is not installable here, see environment.md).

One lock-step play (every frame waits for the node) backs three tests, a
burst play (as fast as the player can publish) the fourth; a second
lock-step play with temporal smoothing and hysteresis on is compared with
cass_bag under the same parameters.
"""

from __future__ import annotations

import numpy as np
import pytest
from bag_harness import FEATURE_SETTINGS, diagnostic_counters, read_bag, write_params_file
from frame_agreement import assert_label_images_agree, assert_objects_agree, assert_overlays_agree

from cass_ros.bag import io as bag_io
from cass_ros.bag import tool as bag_tool
from cass_ros.core.agreement import AgreementRule, compare_labels
from cass_ros.ros.outputs.features import features_array

RAW = "/camera/image_raw"


@pytest.fixture(scope="module")
def lockstep_run(play_into_node, sample_bag, bag_params_file):
    return play_into_node(sample_bag.path, bag_params_file, topics=[RAW, "/cass/prompts"],
                          lockstep=True)


def test_every_frame_yields_outputs(lockstep_run, sample_bag):
    run = lockstep_run
    assert run.recording.missed_frames == [], run.node_log[-2000:]
    assert run.input_stamps == sample_bag.stamps_ns
    for topic in ("/cass/camera/objects", "/cass/camera/segmentation",
                  "/cass/camera/segmentation/color"):
        msgs = run.recording.messages(topic)
        assert [bag_io.stamp_ns(m.header.stamp) for m in msgs] == sample_bag.stamps_ns, topic
        assert all(m.header.frame_id == "camera_optical_frame" for m in msgs)


def test_prompt_message_changes_classes_from_the_right_frame(lockstep_run, sample_bag,
                                                            sample_bag_module):
    run = lockstep_run
    k = sample_bag.first_frame_after_prompt
    objects = run.objects()
    assert [run.frame_index(o) for o in objects] == list(range(sample_bag.frames))
    assert [o.prompt_id for o in objects] == [1] * k + [2] * (sample_bag.frames - k)
    before = ["background"] + sample_bag_module.INITIAL_PROMPTS
    after = ["background", "car", "sun", "wheel", "roof"]
    assert all(list(o.class_names) == before for o in objects[:k])
    assert all(list(o.class_names) == after for o in objects[k:])
    tables = run.recording.messages("/cass/classes")
    assert [t.prompt_id for t in tables] == [1, 2]
    assert list(tables[-1].class_names) == after


@pytest.mark.arithmetic
def test_live_outputs_equal_the_offline_tool(lockstep_run, offline_run):
    """Same bag, same parameters file: the node and cass_bag agree on every
    frame: label images, class tables, objects."""
    assert_live_equals_offline(lockstep_run, read_bag(offline_run.out))


def assert_live_equals_offline(lockstep_run, offline) -> bool:
    """The live node's outputs are cass_bag's by the agreement rule: the node
    runs in another process, whose kernels and thread pool are its own, so
    a near-tied pixel may flip (frame_agreement). Returns whether every
    label image is equal."""
    def by_stamp(msgs):
        return {bag_io.stamp_ns(m.header.stamp): m for m in msgs}

    off_labels = by_stamp(m for _, m in offline["/cass/camera/segmentation"])
    off_objects = by_stamp(m for _, m in offline["/cass/camera/objects"])
    off_color = by_stamp(m for _, m in offline["/cass/camera/segmentation/color"])
    live_labels = lockstep_run.recording.messages("/cass/camera/segmentation")
    live_objects = lockstep_run.objects()
    live_color = by_stamp(lockstep_run.recording.messages("/cass/camera/segmentation/color"))
    assert len(live_labels) == len(off_labels) == len(live_color) == 20
    stamps = [bag_io.stamp_ns(m.header.stamp) for m in live_labels]
    equal = assert_label_images_agree(live_labels, [off_labels[s] for s in stamps])
    # with instance outlines on the overlay, the instance images they are drawn from
    topic = "/cass/camera/instances"
    live_inst = by_stamp(lockstep_run.recording.messages(topic)) if topic in offline else {}
    off_inst = by_stamp(m for _, m in offline.get(topic, []))
    for lab, obj, stamp in zip(live_labels, live_objects, stamps, strict=True):
        assert bag_io.stamp_ns(obj.header.stamp) == stamp
        assert_objects_agree(obj, off_objects[stamp], lab, off_labels[stamp])
        assert_overlays_agree(lab, off_labels[stamp], live_color[stamp], off_color[stamp],
                              live_inst.get(stamp), off_inst.get(stamp))
    return all(equal)


def test_too_fast_drops_frames_but_never_falls_behind(play_into_node, sample_bag,
                                                      bag_params_file):
    """Played as fast as the player can publish: the node drops frames,
    processes them in order, always ends on the newest frame and never has
    more than the frame in progress and one waiting."""
    run = play_into_node(sample_bag.path, bag_params_file, topics=[RAW], rate=0.0,
                         extra_topics={"/diagnostics": "diagnostic_msgs/msg/DiagnosticArray"})
    n = len(run.input_stamps)
    assert n == sample_bag.frames
    received = [r for r in run.recording.received if r.topic == "/cass/camera/objects"]
    objects = run.objects()
    idx = [run.frame_index(o) for o in objects]
    assert idx, run.node_log[-2000:]
    assert idx == sorted(set(idx)), f"out of order or repeated: {idx}"
    assert idx[-1] == n - 1, f"the newest frame was not processed: {idx}"
    assert len(idx) < n, "no frame dropped: the node kept up with a burst"
    # After the last frame went out, at most the frame in progress and the
    # one waiting come out (a third may still be in DDS's keep-last-1 reader
    # cache); a node with a queue would work through the whole burst.
    after_end = [run.frame_index(o) for o, r in zip(objects, received) if r.time_ns > run.end_ns]
    stale = [i for i in after_end if i != n - 1]
    assert len(stale) <= 2, f"frames finished after the burst ended: {after_end}"
    counters = diagnostic_counters(run.recording)
    assert counters, "no /diagnostics from the node"
    got, done = int(counters["received"]), int(counters["processed"])
    in_node = int(counters.get("dropped_in_node", counters["dropped"]))
    in_dds = int(counters.get("dropped_in_dds", 0))
    # Every frame the node received was either segmented or dropped: none waits.
    assert got == done + in_node and done == len(idx)
    # Each frame skipped between two segmented ones was replaced in the node
    # or lost in DDS (a gap in the publisher's sequence numbers); frames
    # before the first one the node saw leave no gap to count, so a burst of
    # which only the newest frame arrived counts none.
    skipped = sum(b - a - 1 for a, b in zip(idx, idx[1:]))
    assert in_node + in_dds >= skipped, (idx, in_node, in_dds)
    # Frames lost before the callback (DDS's keep-last-1 reader cache) are
    # counted from gaps in the publisher's sequence numbers.
    assert got + in_dds <= n
    print(f"burst: {n} frames published, {got} received by the node, {done} segmented "
          f"{idx}, {in_node} dropped in the node, {in_dds} dropped in DDS (keep last 1); "
          f"finished after the burst: {after_end}")


# Temporal stability on: the history's weight, and hysteresis both ways.
TEMPORAL = {"temporal_smoothing": 0.7, "temporal_present_on_frames": 2,
            "temporal_present_off_frames": 3}


@pytest.fixture(scope="module")
def temporal_params_file(tmp_path_factory, bag_settings):
    return write_params_file(tmp_path_factory.mktemp("params") / "cass_temporal.yaml",
                             dict(bag_settings, **TEMPORAL))


@pytest.mark.arithmetic
def test_live_equals_offline_with_temporal_smoothing(play_into_node, sample_bag,
                                                     temporal_params_file, offline_run,
                                                     tmp_path_factory):
    """Smoothing and hysteresis on in the parameters file: the node (one
    stream per camera, header stamps) and cass_bag (one per topic) still
    agree on every frame, and the outputs are not the per-frame ones."""
    out = tmp_path_factory.mktemp("offline_temporal") / "out_bag"
    bag_tool.run(bag_tool.BagToolOptions(input_bag=sample_bag.path, out=out,
                                         params_file=temporal_params_file, progress=False))
    offline = read_bag(out)
    live = play_into_node(sample_bag.path, temporal_params_file, topics=[RAW, "/cass/prompts"],
                          lockstep=True)
    assert_live_equals_offline(live, offline)
    plain = read_bag(offline_run.out)
    smoothed = [bag_io.image_array(m) for _, m in offline["/cass/camera/segmentation"]]
    per_frame = [bag_io.image_array(m) for _, m in plain["/cass/camera/segmentation"]]
    k = sample_bag.first_frame_after_prompt
    # the first frame, and the first after the prompt change, have no history
    assert np.array_equal(smoothed[0], per_frame[0])
    assert np.array_equal(smoothed[k], per_frame[k])
    assert any(not np.array_equal(a, b) for a, b in zip(smoothed, per_frame))
    # hysteresis: nothing is present on the first frame (on after 2 frames)
    first = offline["/cass/camera/objects"][0][1]
    assert any(o.pixel_count > 0 for o in first.objects)
    assert not any(o.present for o in first.objects)


INSTANCES = {"instances": True, "instance_min_pixels": 20, "track_min_hits": 2,
             "overlay_instance_outline": True}


@pytest.mark.arithmetic
def test_live_equals_offline_for_instances_and_track_ids(play_into_node, sample_bag,
                                                         bag_settings, tmp_path_factory):
    """Instances and tracks on (docs/ros-interface.md, "Instances and tracks"):
    the node (one tracker per camera) and cass_bag (one per topic) give the
    same instance images, the same instances and the same track ids on every
    frame, the prompt change included (it restarts the tracks)."""
    params = write_params_file(tmp_path_factory.mktemp("params") / "cass_instances.yaml",
                               dict(bag_settings, **INSTANCES))
    out = tmp_path_factory.mktemp("offline_instances") / "out_bag"
    bag_tool.run(bag_tool.BagToolOptions(input_bag=sample_bag.path, out=out,
                                         params_file=params, progress=False))
    offline = read_bag(out)
    extra = {"/cass/camera/instances": bag_io.IMAGE,
             "/cass/camera/instance_objects": bag_io.INSTANCES}
    live = play_into_node(sample_bag.path, params, topics=[RAW, "/cass/prompts"],
                          lockstep=True, extra_topics=extra)
    exact = assert_live_equals_offline(live, offline)
    assert_instances_agree(live, offline, exact, sample_bag.frames, embeddings=False)
    off_objects = {bag_io.stamp_ns(m.header.stamp): m
                   for _, m in offline["/cass/camera/instance_objects"]}
    # track_min_hits 2: nothing on the first frame, nor on the first after the prompt change
    k = sample_bag.first_frame_after_prompt
    ordered = [off_objects[s] for s in sorted(off_objects)]
    assert not ordered[0].instances and not ordered[k].instances
    later = [i.id for i in ordered[k + 1].instances]
    assert later and min(later) > max(i.id for m in ordered[:k] for i in m.instances)


def assert_instances_agree(live, offline, exact: bool, frames: int, embeddings: bool) -> None:
    """The node's /instances and /instance_objects against cass_bag's: the
    same track ids, classes and ages on every frame; pixel counts and
    instance images equal, or (a near-tied pixel flipped between the
    processes: ``exact`` False) within the agreement rule; ``embeddings``
    (instance_embeddings: true) on every instance of both, equal up to the
    two processes' float32 rounding where the pixel counts are, else nearly
    parallel; otherwise none."""
    def stamp_of(msg):
        return bag_io.stamp_ns(msg.header.stamp)

    off_images = {stamp_of(m): bag_io.image_array(m)
                  for _, m in offline["/cass/camera/instances"]}
    off_objects = {stamp_of(m): m for _, m in offline["/cass/camera/instance_objects"]}
    live_objects = live.recording.messages("/cass/camera/instance_objects")
    assert len(live_objects) == len(off_objects) == frames
    ids = set()
    for m in live_objects:
        o = off_objects[stamp_of(m)]
        # A near-tied pixel flipped between the processes (the agreement
        # rule) moves an instance's pixel count, never its track.
        assert [(i.id, i.class_id, i.age) for i in m.instances] == [
            (i.id, i.class_id, i.age) for i in o.instances]
        counts = np.array([[i.pixel_count for i in x.instances] for x in (m, o)])
        moved = int(np.abs(counts[0] - counts[1]).max(initial=0))
        assert moved == 0 if exact else moved <= 0.001 * off_images[stamp_of(m)].size
        for a, b, na, nb in zip(m.instances, o.instances, *counts):
            ea, eb = np.asarray(a.embedding), np.asarray(b.embedding)
            assert len(ea) == len(eb) and bool(len(ea)) == embeddings
            if embeddings and na == nb:
                np.testing.assert_allclose(ea, eb, atol=1e-5)
            elif embeddings:
                assert float(ea @ eb) >= 0.999
        ids |= {i.id for i in m.instances}
    assert ids, "no instance in the sample bag"
    images = live.recording.messages("/cass/camera/instances")
    got = [bag_io.image_array(m) for m in images]
    want = [off_images[stamp_of(m)] for m in images]
    if exact:
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
    else:
        rule = AgreementRule(min_share=0.999)
        rule.check(compare_labels(got, want))


@pytest.mark.arithmetic
def test_live_equals_offline_for_language_features(play_into_node, sample_bag, features_run):
    """The language features on (publish_features, instance_embeddings,
    re-identification: harness FEATURE_SETTINGS): the node and cass_bag write
    the same /features (the grid, placement, model and weights; the values
    within float16 rounding of two processes' arithmetic: the dense features
    are the image's alone, no near-tie flips them), the same embeddings and
    the same track ids, the ids re-identification gave back included."""
    offline = read_bag(features_run.out)
    extra = {"/cass/camera/instances": bag_io.IMAGE,
             "/cass/camera/instance_objects": bag_io.INSTANCES,
             "/cass/camera/features": bag_io.FEATURES}
    live = play_into_node(sample_bag.path, features_run.params, topics=[RAW, "/cass/prompts"],
                          lockstep=True, extra_topics=extra)
    exact = assert_live_equals_offline(live, offline)
    assert_instances_agree(live, offline, exact, sample_bag.frames, embeddings=True)
    off = {bag_io.stamp_ns(m.header.stamp): m for _, m in offline["/cass/camera/features"]}
    got = live.recording.messages("/cass/camera/features")
    assert len(got) == len(off) == sample_bag.frames
    fields = ("model", "weights_sha256", "height", "width", "channels", "dtype", "layout",
              "image_height", "image_width")
    for m in got:
        o = off[bag_io.stamp_ns(m.header.stamp)]
        assert m.header == o.header
        assert [getattr(m, f) for f in fields] == [getattr(o, f) for f in fields]
        assert (list(m.scale), list(m.offset)) == (list(o.scale), list(o.offset))
        a, b = features_array(m), features_array(o)
        # the two processes' float32 values differ by their rounding (the
        # image embeddings, float32, by < 1e-7), then each is rounded to
        # float16: near a rounding boundary they land on neighbouring
        # float16 values, one step apart (seen: 2^-12 at 0.25); near zero
        # float16's steps are finer than the float32 difference (2^-20 floor)
        step = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float16))
        assert np.all(np.abs(a - b) <= np.maximum(step.astype(np.float32), 2.0 ** -20))
        np.testing.assert_allclose(m.image_embedding, o.image_embedding, atol=1e-5)
    # re-identification happened: an id back after more than track_max_missed frames
    seen: dict[int, list[int]] = {}
    for n, m in enumerate(live.recording.messages("/cass/camera/instance_objects")):
        for i in m.instances:
            seen.setdefault(i.id, []).append(n)
    gaps = [b - a - 1 for f in seen.values() for a, b in zip(f, f[1:])]
    assert max(gaps, default=0) > FEATURE_SETTINGS["track_max_missed"]

"""cass_bag's language features (docs/ros-interface.md, "Language
features"; cass_bag): /cass/<cam>/features against the library's dense
features of the frame, the instances' embeddings against an independent
mean over their pixels, re-identification, semantic_inference's topics,
and nothing added while the parameters are off. Tiny random models; the
live node's equality is test_bag_live.py's."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from bag_harness import FEATURE_SETTINGS, read_bag
from semantic_msgs import FILES as SEMANTIC_FILES

from cass_ros.bag import io as bag_io
from cass_ros.bag import tool as bag_tool
from cass_ros.cli import bag as bag_cli
from cass_ros.core.queries.dense import dense_features
from cass_ros.core.segmenter import Segmenter
from cass_ros.ros import params as node_params
from cass_ros.ros.outputs.features import features_array

RAW = "/camera/image_raw"
CAM = "/cass/camera"
# float16 keeps 11 significant bits: half a step is 2^-11 of the value
FP16_RTOL, FP16_ATOL = 2.0 ** -11, 2.0 ** -24
BASE_TOPICS = {"/cass/classes", f"{CAM}/segmentation", f"{CAM}/segmentation/color",
               f"{CAM}/objects"}
if bag_io.vision_missing(bag_io.make_typestore()) is None:   # test_bag_vision.py
    BASE_TOPICS |= {f"{CAM}/detections", f"{CAM}/label_info"}


def by_stamp(msgs):
    return {bag_io.stamp_ns(m.header.stamp): m for _, m in msgs}


@pytest.fixture(scope="module")
def library(features_run):
    """A segmenter loaded on its own from the same settings: the library's
    dense features of an input frame (Segmenter.encode, dense_features)."""
    config, _ = node_params.settings_from_values(features_run.settings)
    seg = Segmenter(config)

    def dense(rgb: np.ndarray):
        return dense_features(seg.encode([rgb]), seg.clip.patch)[0]

    return seg, dense


@pytest.fixture(scope="module")
def frames(sample_bag):
    """(stamp, header, rgb) of three input frames: the first, the first
    under the bag's second prompt set, the last."""
    inputs = read_bag(sample_bag.path)[RAW]
    picked = [0, sample_bag.first_frame_after_prompt, len(inputs) - 1]
    return [(bag_io.stamp_ns(m.header.stamp), m.header, bag_io.image_to_rgb(m))
            for _, m in (inputs[i] for i in picked)]


def test_features_topic_is_the_librarys_dense_features(features_run, frames, library,
                                                      sample_bag):
    out = read_bag(features_run.out)
    feats, labels = by_stamp(out[f"{CAM}/features"]), by_stamp(out[f"{CAM}/segmentation"])
    assert len(feats) == sample_bag.frames
    seg, dense_of = library
    for stamp, header, rgb in frames:
        msg, want = feats[stamp], dense_of(rgb)
        assert (msg.header.stamp, msg.header.frame_id) == (header.stamp, header.frame_id)
        gh, gw, e = want.patches.shape
        assert (msg.height, msg.width, msg.channels) == (gh, gw, e)
        assert (msg.dtype, msg.layout, len(msg.data)) == ("float16", "HWC", gh * gw * e * 2)
        got = features_array(msg)
        np.testing.assert_allclose(got, want.patches.float().numpy(), rtol=FP16_RTOL,
                                   atol=FP16_ATOL)
        np.testing.assert_allclose(msg.image_embedding, want.image.float().numpy(), atol=1e-6)
        # placement in the label image: cells per pixel, pixel 0's centre
        h, w = bag_io.image_array(labels[stamp]).shape
        assert (msg.image_height, msg.image_width) == (h, w) == rgb.shape[:2]
        assert list(msg.scale) == [gh / h, gw / w]
        assert list(msg.offset) == [0.5 * (gh / h - 1.0), 0.5 * (gw / w - 1.0)]
        assert (msg.model, msg.weights_sha256) == (seg.models.clip_id, seg.models.weights_sha256())
        assert len(msg.weights_sha256) == 64


def test_instance_embeddings_are_the_mean_over_their_pixels(features_run, frames, library):
    """Each published instance's embedding: the library's dense features
    upsampled bilinearly (align_corners False) to the label image, averaged
    over the pixels /instances gives its id, L2-normalised."""
    out = read_bag(features_run.out)
    objects, images = by_stamp(out[f"{CAM}/instance_objects"]), by_stamp(out[f"{CAM}/instances"])
    _, dense_of = library
    checked = 0
    for stamp, _, rgb in frames:
        ids = bag_io.image_array(images[stamp]) & 0xFFFF                     # (H, W)
        patches = dense_of(rgb).patches.float().permute(2, 0, 1)[None]       # (1, E, gh, gw)
        up = F.interpolate(patches, size=ids.shape, mode="bilinear", align_corners=False)[0]
        for inst in objects[stamp].instances:
            mask = torch.from_numpy(ids == inst.id % 65535 + 1)
            assert int(mask.sum()) == inst.pixel_count > 0
            mean = up[:, mask].mean(dim=1)
            np.testing.assert_allclose(inst.embedding, (mean / mean.norm()).numpy(), atol=1e-5)
            checked += 1
    assert checked, "no published instance in the frames checked"


def test_reidentification_gives_ids_back(features_run):
    """With track_max_missed 1 a track missed for two frames ends, and track
    ids only increase: an id seen again after a longer gap was given back
    by re-identification, with the embeddings cass_bag pooled."""
    objects = [m for _, m in read_bag(features_run.out)[f"{CAM}/instance_objects"]]
    seen: dict[int, list[int]] = {}
    for n, m in enumerate(objects):
        for inst in m.instances:
            seen.setdefault(inst.id, []).append(n)
    gaps = [b - a - 1 for frames_of in seen.values() for a, b in zip(frames_of, frames_of[1:])]
    assert max(gaps, default=0) > FEATURE_SETTINGS["track_max_missed"], seen


def test_without_the_parameters_nothing_is_added(offline_run, sample_bag, bag_settings,
                                                tmp_path):
    """Off (the default) no topic is added; instances on without
    instance_embeddings: today's instance topics, every embedding empty."""
    assert set(read_bag(offline_run.out)) == BASE_TOPICS
    out = tmp_path / "out_bag"
    settings = dict(bag_settings, instances=True, instance_min_pixels=20)
    bag_tool.run(bag_tool.BagToolOptions(input_bag=sample_bag.path, out=out, settings=settings,
                                         topics=[RAW], progress=False, frame_range=(0, 3)))
    got = read_bag(out)
    assert set(got) == BASE_TOPICS | {f"{CAM}/instances", f"{CAM}/instance_objects"}
    instances = [i for _, m in got[f"{CAM}/instance_objects"] for i in m.instances]
    assert instances and all(len(i.embedding) == 0 for i in instances)


@pytest.fixture
def semantic_prefix(tmp_path, monkeypatch):
    """A prefix holding semantic_inference_msgs' definitions (the field lists
    of issue 23, as harness/semantic_msgs.py builds them) on
    AMENT_PREFIX_PATH: all cass_bag needs of the package."""
    msg = tmp_path / "prefix" / "share" / bag_io.SEMANTIC_PACKAGE / "msg"
    msg.mkdir(parents=True)
    for name, text in SEMANTIC_FILES.items():
        if name.startswith("msg/"):
            (msg / name[4:]).write_text(text)
    monkeypatch.setenv("AMENT_PREFIX_PATH", os.pathsep.join(
        [str(tmp_path / "prefix"), os.environ.get("AMENT_PREFIX_PATH", "")]))
    bag_io.make_typestore.cache_clear()
    yield msg
    monkeypatch.undo()
    bag_io.make_typestore.cache_clear()


def test_semantic_inference_topics(semantic_prefix, sample_bag, features_run, tmp_path):
    """semantic_inference: true with the definitions there: per frame the
    FeatureImage (16UC1 at the label image's size, cass_bag having no depth)
    holds /instances' instance bits, mask_ids the published ids and features
    their instance_objects embeddings, in order; the FeatureVectorStamped is
    the frame's image embedding (/features)."""
    out = tmp_path / "out_bag"
    settings = dict(features_run.settings, semantic_inference=True)
    bag_tool.run(bag_tool.BagToolOptions(input_bag=sample_bag.path, out=out, settings=settings,
                                         topics=[RAW], progress=False, frame_range=(0, 6)))
    got = read_bag(out)
    images, objects = by_stamp(got[f"{CAM}/instances"]), by_stamp(got[f"{CAM}/instance_objects"])
    feats = by_stamp(got[f"{CAM}/features"])
    fimgs, fvecs = got[f"{CAM}/semantic/image_raw"], by_stamp(got[f"{CAM}/semantic/feature"])
    assert len(fimgs) == len(fvecs) == 6
    published = 0
    for _, fi in fimgs:
        stamp = bag_io.stamp_ns(fi.header.stamp)
        ids = bag_io.image_array(images[stamp]) & 0xFFFF
        assert (fi.image.encoding, fi.image.height, fi.image.width) == ("16UC1", *ids.shape)
        assert fi.image.header == fi.header
        got_ids = np.frombuffer(bytes(fi.image.data), "<u2").reshape(ids.shape)
        assert np.array_equal(got_ids, ids)
        insts = objects[stamp].instances
        assert list(fi.mask_ids) == [i.id % 65535 + 1 for i in insts]
        assert len(fi.features) == len(insts)
        for f, i in zip(fi.features, insts):
            assert np.array_equal(f.data, i.embedding) and len(f.data) > 0
        published += len(insts)
        np.testing.assert_array_equal(fvecs[stamp].feature.data, feats[stamp].image_embedding)
    assert published, "no published instance in the frames written"


def test_semantic_inference_without_the_package_is_one_line(bag_params_file, sample_bag,
                                                           tmp_path, capsys):
    """Asked for without semantic_inference_msgs' definitions: exit 2 before
    the model loads, one line that names the package, no output bag."""
    bag_io.make_typestore.cache_clear()
    if bag_io.find_semantic_msg_dir() is not None:
        pytest.skip("semantic_inference_msgs is installed on a prefix of AMENT_PREFIX_PATH")
    rc = bag_cli.main([str(sample_bag.path), "--out", str(tmp_path / "out"),
                       "--params-file", str(bag_params_file), "--no-progress",
                       "--set", "instances=true", "--set", "semantic_inference=true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == bag_cli.EXIT_USAGE
    assert err[-1].startswith("cass_bag: error: semantic_inference: true")
    assert bag_io.SEMANTIC_PACKAGE in err[-1] and "AMENT_PREFIX_PATH" in err[-1]
    assert not (tmp_path / "out").exists()

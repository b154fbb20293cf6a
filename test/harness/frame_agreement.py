"""The agreement rule (cass_ros.core.agreement, docs/algorithm.md 8) for
what two runs wrote: label images, colour overlays and objects messages.

For two runs whose arithmetic differs (batch sizes, chunks on other
workers, the live node against cass_bag in another process, kernels chosen
per process): never bit for bit. The label images agree by the rule's share;
where a frame's labels are equal, everything derived from them is equal too;
where they differ, each run's objects must still describe its own label
image, and no pixel count may move by more than the pixels that changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cass_ros.bag import io as bag_io
from cass_ros.core.agreement import AgreementRule, compare_labels

# One near-tie pixel in a 640 x 480 frame is 0.0003 %: a share of 99.99 %
# still catches any real change of the segmentation.
LABELS_RULE = AgreementRule(min_share=0.9999)
# presence and mean confidence: float32 rounding of the two runs' sums
PROB_ATOL = 1e-5


def assert_label_images_agree(a: Sequence[Any], b: Sequence[Any],
                              rule: AgreementRule = LABELS_RULE) -> list[bool]:
    """Label image messages of two runs, frame by frame (same headers;
    rclpy's or rosbags' messages). Returns, per frame, whether its labels are equal."""
    assert len(a) == len(b)
    assert [_header(m) for m in a] == [_header(m) for m in b]
    la, lb = [bag_io.image_array(m) for m in a], [bag_io.image_array(m) for m in b]
    rule.check(compare_labels(la, lb))
    return [bool(np.array_equal(x, y)) for x, y in zip(la, lb)]


def assert_overlays_agree(labels_a: Any, labels_b: Any, color_a: Any, color_b: Any,
                          instances_a: Any = None, instances_b: Any = None) -> None:
    """Colour overlays equal wherever the two label images are, and, with
    instance outlines drawn (instance images given), where the instance
    images are equal at the pixel and its 4-neighbours too: an outline is
    drawn from those (core.visualize.outline_instances), and a flipped pixel
    may renumber or reshape an instance beyond itself."""
    same = bag_io.image_array(labels_a) == bag_io.image_array(labels_b)
    if instances_a is not None:
        eq = bag_io.image_array(instances_a) == bag_io.image_array(instances_b)
        p = np.pad(eq, 1, constant_values=True)
        same &= eq & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    ca, cb = bag_io.image_array(color_a), bag_io.image_array(color_b)
    assert np.array_equal(ca[same], cb[same])


def assert_objects_agree(a: Any, b: Any, labels_a: Any, labels_b: Any) -> None:
    """Two objects messages of one frame, with the label images they were
    computed from (messages)."""
    assert (_header(a), a.prompt_id, list(a.class_names)) == \
        (_header(b), b.prompt_id, list(b.class_names))
    assert [(o.class_id, o.label) for o in a.objects] == [(o.class_id, o.label) for o in b.objects]
    for name in ("presence", "mean_confidence"):
        np.testing.assert_allclose([getattr(o, name) for o in a.objects],
                                   [getattr(o, name) for o in b.objects], rtol=0, atol=PROB_ATOL)
    la, lb = bag_io.image_array(labels_a), bag_io.image_array(labels_b)
    if np.array_equal(la, lb):
        assert [_derived(o) for o in a.objects] == [_derived(o) for o in b.objects]
        return
    changed = int(np.count_nonzero(la != lb))
    for msg, labels in ((a, la), (b, lb)):
        _assert_objects_describe(msg, labels)
    for oa, ob in zip(a.objects, b.objects):
        assert abs(oa.pixel_count - ob.pixel_count) <= changed


def _header(msg: Any) -> tuple[int, str]:
    """A header as comparable values (rclpy's and rosbags' messages alike)."""
    return bag_io.stamp_ns(msg.header.stamp), msg.header.frame_id


def _derived(o: Any) -> tuple:
    """What an object entry derives from the label image alone."""
    return (o.present, o.pixel_count, o.area_fraction, o.bbox.x_offset, o.bbox.y_offset,
            o.bbox.width, o.bbox.height)


def _assert_objects_describe(msg: Any, labels: np.ndarray) -> None:
    """Each entry's pixel count and box are those of its label in ``labels``
    (computed here independently of the run)."""
    for o in msg.objects:
        ys, xs = np.nonzero(labels == o.class_id)
        assert o.pixel_count == ys.size
        box = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] \
            if ys.size else [0, 0, 0, 0]
        assert [o.bbox.x_offset, o.bbox.y_offset, o.bbox.width, o.bbox.height] == box

"""label_stats.device_label_statistics against result.label_statistics
(numpy) and a per-label loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cass_ros.core.label_stats import device_label_statistics
from cass_ros.core.result import label_statistics


def _loop(labels: np.ndarray, conf: np.ndarray, k: int):
    counts, means, boxes = np.zeros(k, np.int64), np.zeros(k), np.zeros((k, 4), np.int64)
    for lab in range(k):
        ys, xs = np.nonzero(labels == lab)
        if ys.size:
            counts[lab] = ys.size
            means[lab] = conf[ys, xs].astype(np.float64).mean()
            boxes[lab] = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    return counts, means, boxes


@pytest.mark.parametrize("shape,k,seed", [((3, 5), 4, 0), ((48, 64), 7, 1), ((31, 17), 300, 2),
                                          ((1, 1), 2, 3)])
def test_device_statistics_match_numpy_and_a_loop(shape, k, seed):
    rng = np.random.default_rng(seed)
    # blocks of labels plus noise; some labels absent
    labels = rng.integers(0, max(2, k // 2), size=shape)
    labels[: shape[0] // 2, : shape[1] // 3] = k - 1
    conf = rng.random(shape, dtype=np.float32)
    counts, means, boxes = device_label_statistics(torch.from_numpy(labels),
                                                   torch.from_numpy(conf), k)
    ref_counts, ref_means, ref_boxes = _loop(labels, conf, k)
    np.testing.assert_array_equal(counts.numpy(), ref_counts)
    np.testing.assert_array_equal(boxes.numpy(), ref_boxes)
    np.testing.assert_allclose(means.numpy(), ref_means, rtol=1e-12, atol=0)
    assert counts.dtype == torch.int64 and boxes.dtype == torch.int64
    n_counts, n_means, n_boxes = label_statistics(labels.astype(np.uint16), conf, k)
    np.testing.assert_array_equal(counts.numpy(), n_counts)
    np.testing.assert_array_equal(boxes.numpy(), n_boxes)
    np.testing.assert_allclose(means.numpy().astype(np.float32), n_means, rtol=1e-6)


def test_absent_labels_are_zero():
    labels = torch.zeros(4, 6, dtype=torch.int64)
    labels[1:3, 2:5] = 2
    counts, means, boxes = device_label_statistics(labels, torch.full((4, 6), 0.5), 4)
    assert counts.tolist() == [18, 0, 6, 0]
    assert boxes.tolist() == [[0, 0, 6, 4], [0, 0, 0, 0], [2, 1, 3, 2], [0, 0, 0, 0]]
    assert means.tolist() == [0.5, 0.0, 0.5, 0.0]

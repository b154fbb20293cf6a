"""cass_bag --batch N (issue 8): frames are segmented N per model call, and
the output bag is the unbatched one: the same label images and objects at
the same bag times with the same headers, the prompt message in the middle
of a batch honoured from the next frame on. Tiny random models on the CPU.

A batch stacks the images into one forward, so the matmuls block
differently and a near-tied pixel may flip (it did on an Intel Xeon with
AVX-512, issue 22): the outputs are compared with the agreement rule
(frame_agreement), not bit for bit."""

from __future__ import annotations

import pytest
from bag_harness import read_bag
from frame_agreement import assert_label_images_agree, assert_objects_agree, assert_overlays_agree

from cass_ros.bag import tool as bag_tool
from cass_ros.cli import bag as bag_cli


@pytest.mark.arithmetic
def test_batched_bag_equals_unbatched(tmp_path, offline_run, sample_bag, bag_params_file,
                                      monkeypatch):
    from cass_ros.core.segmenter import Segmenter

    calls = []

    real = Segmenter.segment_keeping    # what cass_bag calls: the features for its outputs

    def counting(self, images, *args, **kw):
        calls.append(len(images))
        return real(self, images, *args, **kw)

    monkeypatch.setattr(Segmenter, "segment_keeping", counting)
    # 7 does not divide the 10 frames before the prompt message: the message
    # flushes a batch of 3, the end one of 3.
    code = bag_cli.main([str(sample_bag.path), "--out", str(tmp_path / "out"), "--params-file",
                         str(bag_params_file), "--batch", "7", "--no-progress"])
    assert code == 0
    k = sample_bag.first_frame_after_prompt
    assert k == 10 and sample_bag.frames == 20
    assert calls == [7, 3, 7, 3]

    a, b = read_bag(offline_run.out), read_bag(tmp_path / "out")
    assert set(a) == set(b)
    for topic in ("/cass/camera/segmentation", "/cass/camera/segmentation/color",
                  "/cass/camera/objects"):
        assert [t for t, _ in a[topic]] == [t for t, _ in b[topic]], topic
    labels_a, labels_b = ([m for _, m in x["/cass/camera/segmentation"]] for x in (a, b))
    assert_label_images_agree(labels_a, labels_b)
    for la, lb, (_, ca), (_, cb), (_, oa), (_, ob) in zip(
            labels_a, labels_b, a["/cass/camera/segmentation/color"],
            b["/cass/camera/segmentation/color"], a["/cass/camera/objects"],
            b["/cass/camera/objects"], strict=True):
        assert_overlays_agree(la, lb, ca, cb)
        assert_objects_agree(oa, ob, la, lb)
    objects_b = b["/cass/camera/objects"]
    # the prompt message (after frame k - 1, in the middle of the second batch)
    assert [m.prompt_id for _, m in objects_b] == [1] * k + [2] * (sample_bag.frames - k)
    assert [m.prompt_id for _, m in b["/cass/classes"]] == [1, 2]


def test_batch_must_be_positive(tmp_path, sample_bag, bag_params_file, capsys):
    code = bag_cli.main([str(sample_bag.path), "--out", str(tmp_path / "o"), "--params-file",
                         str(bag_params_file), "--batch", "0", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == "cass_bag: error: --batch must be >= 1, not 0"
    assert not (tmp_path / "o").exists()
    opts = bag_tool.BagToolOptions(input_bag=sample_bag.path, out=tmp_path / "o")
    assert opts.batch == 1  # the default: one frame per call, as before

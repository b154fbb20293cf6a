"""``cass_eval``: the metric against an independent computation, every
dataset layout and label rule on synthetic data, resumption, errors, and the
end-to-end path through the real Segmenter on tiny random models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from cass_ros.cli import eval as cli
from cass_ros.core.config import build_config
from cass_ros.core.datasets import (
    COCO_UNUSED_IDS,
    DATASETS,
    DatasetError,
    apply_label_rule,
    coco_raw_lut,
    load_split,
)
from cass_ros.core.metrics import (
    confusion_matrix,
    dense_from_entries,
    metrics_from_confusion,
    sparse_entries,
)
from cass_ros.core.prompts import prompt_set_from_settings
from cass_ros.core.segmenter import Segmenter

SIZES = [(40, 48), (48, 40), (40, 48)]


# ---------------------------------------------------------------- an independent metric


def reference_metrics(gts: list[np.ndarray], preds: list[np.ndarray], k: int) -> dict:
    """Per-class sets of pixels, counted class by class (no confusion matrix):
    mmseg's definitions written out."""
    iou, acc = [], []
    tp_all = gt_all = 0
    for c in range(k):
        inter = union = gt_c = 0
        for gt, pred in zip(gts, preds, strict=True):
            valid = gt != 255
            g = (gt == c) & valid
            p = (pred == c) & valid
            inter += int((g & p).sum())
            union += int((g | p).sum())
            gt_c += int(g.sum())
        iou.append(inter / union if union else math.nan)
        acc.append(inter / gt_c if gt_c else math.nan)
        tp_all += inter
        gt_all += gt_c
    iou, acc = np.array(iou), np.array(acc)
    return {"IoU": iou, "Acc": acc, "mIoU": np.nanmean(iou), "mAcc": np.nanmean(acc),
            "aAcc": tp_all / gt_all}


def test_metric_on_a_known_confusion():
    # 3 classes; class 2 never occurs nor is predicted: NaN, not in the means.
    gt = torch.tensor([[0, 0, 0, 1], [1, 1, 255, 255]])
    pred = torch.tensor([[0, 0, 1, 1], [1, 0, 2, 0]])  # the 255 pixels do not count
    cm = confusion_matrix(gt, pred, 3)
    assert cm.tolist() == [[2, 1, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0]]
    m = metrics_from_confusion(cm)
    assert m["IoU"][0] == pytest.approx(2 / 4) and m["IoU"][1] == pytest.approx(2 / 4)
    assert math.isnan(m["IoU"][2]) and math.isnan(m["Acc"][2])
    assert m["mIoU"] == pytest.approx(0.5)
    assert m["Acc"][0] == pytest.approx(2 / 3) and m["Acc"][1] == pytest.approx(2 / 3)
    assert m["aAcc"] == pytest.approx(4 / 6) and m["mAcc"] == pytest.approx(2 / 3)
    assert m["pixels"] == 6


def test_a_class_only_predicted_counts_with_iou_zero_and_no_class_is_a_miss():
    gt = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 1, -1])  # 2: predicted only; -1: no class of the dataset
    cm = confusion_matrix(gt, pred, 3)
    assert cm[:, 3].tolist() == [0, 1, 0]
    m = metrics_from_confusion(cm)
    assert m["IoU"].tolist() == pytest.approx([1 / 2, 1 / 2, 0.0])
    assert m["mIoU"] == pytest.approx(1 / 3)
    assert m["aAcc"] == pytest.approx(2 / 4)


def test_metric_matches_the_independent_computation_on_random_maps():
    rng = np.random.default_rng(3)
    k = 7
    gts, preds = [], []
    total = torch.zeros(k, k + 1, dtype=torch.int64)
    for h, w in ((13, 17), (20, 9), (5, 31)):
        gt = rng.integers(0, k - 1, (h, w))  # class 6 never in the ground truth
        gt[rng.random((h, w)) < 0.2] = 255
        pred = np.where(rng.random((h, w)) < 0.6, gt, rng.integers(0, k, (h, w)))
        pred[gt == 255] = rng.integers(0, k, int((gt == 255).sum()))
        gts.append(gt)
        preds.append(pred)
        cm = confusion_matrix(torch.from_numpy(gt), torch.from_numpy(pred), k)
        assert np.array_equal(dense_from_entries(sparse_entries(cm), k), cm.numpy())
        total += cm
    ours, ref = metrics_from_confusion(total), reference_metrics(gts, preds, k)
    np.testing.assert_allclose(ours["IoU"], ref["IoU"], equal_nan=True)
    np.testing.assert_allclose(ours["Acc"], ref["Acc"], equal_nan=True)
    for key in ("mIoU", "mAcc", "aAcc"):
        assert ours[key] == pytest.approx(ref[key])
    assert math.isnan(ours["Acc"][6]) and not math.isnan(ours["IoU"][6])


def test_metric_rejects_a_label_that_is_no_class():
    with pytest.raises(ValueError, match="ground-truth value 5"):
        confusion_matrix(torch.tensor([0, 5]), torch.tensor([0, 0]), 3)


# ---------------------------------------------------------------- synthetic layouts


def _image(seed: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[h // 4: h // 2, w // 4: w // 2] = (200, 30, 30)
    return img


def _raw_label(seed: int, h: int, w: int, values: list[int]) -> np.ndarray:
    """Blocks of the given raw values, a 255 border (the ignore pixels)."""
    rng = np.random.default_rng(100 + seed)
    label = rng.choice(values, size=(h // 8 + 1, w // 8 + 1)).repeat(8, 0).repeat(8, 1)[:h, :w]
    label = label.astype(np.uint8)
    label[:2] = 255
    return label


def _save_label(path: Path, label: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(label, mode="L")
    if palette:  # as VOC ships them
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    im.save(path)


def _save_image(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


# raw label values each synthetic dataset uses (0 = background where it has one)
RAW_VALUES = {
    "voc21": [0, 1, 5, 15, 20], "voc20": [0, 1, 5, 15, 20],
    "context60": [0, 3, 30, 59], "context59": [0, 3, 30, 59],
    "coco_object": [0, 3, 50, 89, 92, 150, 181],  # raw COCO-Stuff ids: things and stuff
    "coco_stuff": [0, 3, 50, 92, 150, 181],
    "cityscapes": [0, 2, 10, 18], "ade20k": [0, 1, 75, 150],
}


def write_dataset(root: Path, dataset: str, converted: bool = True) -> list[tuple[str, np.ndarray]]:
    """The dataset's layout under ``root`` with len(SIZES) images; returns
    (id, raw label) per image in split order."""
    out = []
    for i, (h, w) in enumerate(SIZES):
        raw = _raw_label(i, h, w, RAW_VALUES[dataset])
        rgb = _image(i, h, w)
        if dataset.startswith("voc") or dataset.startswith("context"):
            ident = f"2008_{i:06d}"
            base = root / ("VOC2012" if dataset.startswith("voc") else "VOC2010")
            _save_image(base / "JPEGImages" / f"{ident}.jpg", rgb)
            folder = "SegmentationClass" if dataset.startswith("voc") else "SegmentationClassContext"
            _save_label(base / folder / f"{ident}.png", raw, palette=dataset.startswith("voc"))
            listing = "Segmentation" if dataset.startswith("voc") else "SegmentationContext"
            lst = base / "ImageSets" / listing / "val.txt"
            lst.parent.mkdir(parents=True, exist_ok=True)
            with open(lst, "a") as f:
                f.write(ident + "\n")
        elif dataset.startswith("coco"):
            ident = f"{i + 139:012d}"
            _save_image(root / "images" / "val2017" / f"{ident}.jpg", rgb)
            if converted:  # what mmseg's / GroupViT's conversion writes
                suffix = "_labelTrainIds.png" if dataset == "coco_stuff" else "_instanceTrainIds.png"
                _save_label(root / "annotations" / "val2017" / f"{ident}{suffix}",
                            coco_raw_lut(dataset)[raw])
            else:
                _save_label(root / "annotations" / "val2017" / f"{ident}.png", raw)
        elif dataset == "cityscapes":
            city = "frankfurt" if i < 2 else "lindau"
            stem = f"{city}_000000_{i:06d}"
            ident = f"{city}/{stem}"
            _save_image(root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png", rgb)
            _save_label(root / "gtFine" / "val" / city / f"{stem}_gtFine_labelTrainIds.png", raw)
        else:
            ident = f"ADE_val_{i + 1:08d}"
            base = root / "ADEChallengeData2016"
            _save_image(base / "images" / "validation" / f"{ident}.jpg", rgb)
            _save_label(base / "annotations" / "validation" / f"{ident}.png", raw)
        out.append((ident, raw))
    return sorted(out)


def expected_label(dataset: str, raw: np.ndarray) -> np.ndarray:
    """The benchmark's label rule, written out per dataset."""
    raw = raw.astype(np.int64)
    if dataset in ("voc20", "context59", "ade20k"):
        return np.where((raw == 0) | (raw == 255), 255, raw - 1)
    if dataset == "coco_stuff":
        used = [i for i in range(182) if i not in COCO_UNUSED_IDS]
        return np.vectorize(lambda v: 255 if v == 255 else used.index(v))(raw)
    if dataset == "coco_object":
        things = [i for i in range(91) if i not in COCO_UNUSED_IDS]
        return np.vectorize(lambda v: 255 if v == 255 else (things.index(v) + 1 if v <= 90 else 0))(raw)
    return raw


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_every_layout_loads_and_its_label_rule_holds(tmp_path, dataset):
    written = write_dataset(tmp_path, dataset)
    split = load_split(dataset, tmp_path)
    assert [s.id for s in split.samples] == [i for i, _ in written]
    for sample, (_, raw) in zip(split.samples, written, strict=True):
        label = split.read_label(sample)
        assert np.array_equal(label, expected_label(dataset, raw)), dataset
        assert (label[:2] == 255).all()
        valid = label[label != 255]
        assert valid.size and valid.max() < DATASETS[dataset].num_classes


@pytest.mark.parametrize("dataset", ["coco_object", "coco_stuff"])
def test_raw_coco_stuff_pngs_are_converted_as_the_preparation_scripts_do(tmp_path, dataset):
    written = write_dataset(tmp_path, dataset, converted=False)
    split = load_split(dataset, tmp_path)
    for sample, (_, raw) in zip(split.samples, written, strict=True):
        assert np.array_equal(split.read_label(sample), expected_label(dataset, raw))
    lut = coco_raw_lut(dataset)
    if dataset == "coco_object":
        assert lut[0] == 1 and lut[89] == 80 and lut[91] == 0 and lut[181] == 0
    else:
        assert lut[0] == 0 and lut[181] == 170 and lut[11] == 255


def test_reduce_zero_label_keeps_255():
    raw = np.array([0, 1, 2, 255])
    assert apply_label_rule(raw, True).tolist() == [255, 0, 1, 255]
    assert apply_label_rule(raw, False).tolist() == [0, 1, 2, 255]


@pytest.mark.parametrize("dataset,remove,message", [
    ("voc21", "VOC2012/ImageSets/Segmentation/val.txt", "expected the split list at"),
    ("voc21", "VOC2012/SegmentationClass/2008_000001.png", "label of 2008_000001 expected at"),
    ("context59", "VOC2010/JPEGImages", "expected the image folder at"),
    ("coco_stuff", "annotations/val2017", "expected the val2017 label folder at"),
    ("cityscapes", "gtFine/val", "expected the gtFine/val folder at"),
    ("ade20k", "ADEChallengeData2016/annotations/validation", "annotations/validation folder"),
])
def test_a_wrong_layout_names_what_was_expected_where(tmp_path, dataset, remove, message):
    import shutil

    write_dataset(tmp_path, dataset)
    target = tmp_path / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DatasetError, match=message) as e:
        load_split(dataset, tmp_path)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def base_args(tiny_weights) -> list[str]:
    clip, dino = tiny_weights
    return ["--set", f"clip_weights={clip}", f"dino_weights={dino}", "short_side=64",
            "--device", "cpu", "-q"]


def _run(args: list[str], out: Path | None = None) -> dict:
    rc = cli.main(args + (["--out", str(out)] if out else []))
    assert rc == 0
    return json.loads((out / cli.METRICS_FILE).read_text()) if out else {}


@pytest.mark.parametrize("dataset", ["voc21", "ade20k"])
def test_end_to_end_equals_the_segmenter_and_the_independent_metric(
        tmp_path, base_args, tiny_weights, dataset):
    write_dataset(tmp_path / "data", dataset)
    report = _run([str(tmp_path / "data"), "--dataset", dataset, "--batch-size", "2", *base_args],
                  tmp_path / "out")
    assert report["num_images"] == len(SIZES) and report["dataset"] == dataset
    assert report["config"]["preset"] == dataset and report["config"]["short_side"] == 64
    # The same predictions through the library, scored independently.
    config = build_config({"preset": dataset, "clip_weights": tiny_weights[0],
                           "dino_weights": tiny_weights[1], "short_side": 64, "device": "cpu"})
    seg = Segmenter(config)
    prepared = seg.prepare_prompts(prompt_set_from_settings([], config.classes_file, []))
    split = load_split(dataset, tmp_path / "data")
    offset = split.spec.pred_offset
    gts, preds = [], []
    # In the tool's batches of two: the same arithmetic, so the same labels on
    # any processor (one by one, a near-tied pixel may flip: docs/algorithm.md 8).
    for start in range(0, len(split.samples), 2):
        batch = split.samples[start:start + 2]
        rgbs = [cv2.cvtColor(cv2.imread(str(s.image)), cv2.COLOR_BGR2RGB) for s in batch]
        preds += [r.labels.astype(np.int64) - offset for r in seg.segment(rgbs, prepared)]
        gts += [split.read_label(s) for s in batch]
    ref = reference_metrics(gts, preds, split.spec.num_classes)
    m = report["metrics"]
    assert m["mIoU"] == pytest.approx(round(100 * ref["mIoU"], 2), abs=0.011)
    assert m["aAcc"] == pytest.approx(round(100 * ref["aAcc"], 2), abs=0.011)
    assert m["mAcc"] == pytest.approx(round(100 * ref["mAcc"], 2), abs=0.011)
    names = [r["class"] for r in m["per_class"]]
    assert len(names) == split.spec.num_classes
    for row, iou in zip(m["per_class"], ref["IoU"], strict=True):
        assert (row["IoU"] is None) == math.isnan(iou)
    cm = np.load(tmp_path / "out" / cli.CONFUSION_FILE)
    assert cm.shape == (split.spec.num_classes, split.spec.num_classes + 1)
    assert cm.sum() == sum(int((g != 255).sum()) for g in gts)
    assert report["seconds_per_image"] > 0


def test_resuming_gives_the_result_of_one_run(tmp_path, base_args):
    write_dataset(tmp_path / "data", "voc20")
    args = [str(tmp_path / "data"), "--dataset", "voc20", *base_args]
    whole = _run(args, tmp_path / "whole")
    part = _run(args + ["--limit", "1"], tmp_path / "resumed")
    assert part["num_images"] == 1
    # An interrupted write leaves a cut line: that image is redone.
    with open(tmp_path / "resumed" / cli.RESULTS_FILE, "a") as f:
        f.write('{"id": "2008_000001", "seconds": 0.1, "confu')
    resumed = _run(args, tmp_path / "resumed")
    assert resumed["this_run"]["resumed"] == 1 and resumed["this_run"]["images"] == 2
    assert resumed["metrics"] == whole["metrics"]
    assert np.array_equal(np.load(tmp_path / "whole" / cli.CONFUSION_FILE),
                          np.load(tmp_path / "resumed" / cli.CONFUSION_FILE))
    again = _run(args, tmp_path / "resumed")  # everything done: nothing runs
    assert again["this_run"]["images"] == 0 and again["metrics"] == whole["metrics"]


def test_resuming_with_other_settings_is_refused(tmp_path, base_args, capsys):
    write_dataset(tmp_path / "data", "voc20")
    args = [str(tmp_path / "data"), "--dataset", "voc20", "--limit", "1", *base_args,
            "--out", str(tmp_path / "out")]
    assert cli.main(args) == 0
    capsys.readouterr()
    assert cli.main(args + ["--set", "global_semantics_weight=0.3"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cass_eval: error:") and "global_semantics_weight" in err
    assert "\n" not in err


def test_custom_layout_with_a_classes_file(tmp_path, base_args, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    for i, (h, w) in enumerate(SIZES[:2]):
        _save_image(images / f"frame{i}.png", _image(i, h, w))
        _save_label(labels / f"frame{i}.png", _raw_label(i, h, w, [0, 1, 2, 3]))
    classes = tmp_path / "classes.txt"
    classes.write_text("chair\ntable\nperson\n")
    report = _run(["--images", str(images), "--labels", str(labels), "--classes-file",
                   str(classes), *base_args], tmp_path / "out")
    assert [r["class"] for r in report["metrics"]["per_class"]] == [
        "background", "chair", "table", "person"]
    out = capsys.readouterr().out
    assert "mIoU" in out and "person" in out
    # Background not scored: label 0 ignored, label v = line v.
    report = _run(["--images", str(images), "--labels", str(labels), "--classes-file",
                   str(classes), "--reduce-zero-label", *base_args], tmp_path / "out2")
    assert [r["class"] for r in report["metrics"]["per_class"]] == ["chair", "table", "person"]


def test_errors_are_one_line(tmp_path, base_args, capsys):
    write_dataset(tmp_path / "data", "voc21")
    (tmp_path / "data" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").unlink()
    assert cli.main([str(tmp_path / "data"), "--dataset", "voc21", *base_args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cass_eval: error: voc21: expected the split list at") and "\n" not in err
    # A classes file of the wrong length for the dataset.
    write_dataset(tmp_path / "ade", "ade20k")
    classes = tmp_path / "few.txt"
    classes.write_text("wall\nfloor\n")
    assert cli.main([str(tmp_path / "ade"), "--dataset", "ade20k", "--classes-file", str(classes),
                     *base_args]) == 2
    err = capsys.readouterr().err.strip()
    assert "ade20k has 150 classes" in err and "\n" not in err
    assert cli.main([str(tmp_path / "ade"), "--dataset", "ade20k", "--set", "prompts=cat",
                     *base_args]) == 2
    assert "classes-file" in capsys.readouterr().err


def test_threshold_pixels_of_a_dataset_without_background_count_as_misses(tmp_path, base_args):
    # voc20 has no background class: prob_threshold sends pixels to label 0,
    # which is no class of the dataset (the confusion's last column).
    write_dataset(tmp_path / "data", "voc20")
    report = _run([str(tmp_path / "data"), "--dataset", "voc20", *base_args,
                   "--set", "prob_threshold=1.0"], tmp_path / "out")
    m = report["metrics"]
    assert m["no_class_pixels"] == m["pixels"] > 0
    assert m["aAcc"] == 0.0 and m["mIoU"] == 0.0 and m["mAcc"] == 0.0
    cm = np.load(tmp_path / "out" / cli.CONFUSION_FILE)
    assert cm[:, :-1].sum() == 0


@pytest.mark.parametrize("argv,message", [
    (["data"], "DATA_ROOT and --dataset"),
    (["--images", "a"], "both --images and --labels"),
    (["--images", "a", "--labels", "b"], "needs --classes-file"),
    (["data", "--dataset", "voc21", "--limit", "0"], "--limit must be >= 1"),
])
def test_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err

"""The paper's eight benchmarks in their official / mmsegmentation layouts,
and a custom layout for a team's own labelled images: which files make the
validation split, and how each label png becomes class indices (the rules
and their sources: docs/evaluation.md). No torch, no ROS.

A label png is read with Pillow (a palette png gives its indices, as
mmseg reads VOC), then ``label_rule`` maps its values to the metric's
class indices 0..K-1 or the ignore index 255.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .metrics import IGNORE_INDEX


class DatasetError(ValueError):
    """A data root that does not hold the expected layout; the message says
    which file or folder was expected where."""


@dataclass(frozen=True)
class Sample:
    id: str          # unique within the split, used to resume
    image: Path
    label: Path


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark: its class count K, whether its class 0 is a background
    class (then label 0 of the prompt set is class 0, otherwise prompt label
    v is class v - 1), and its label rule."""

    name: str
    num_classes: int
    has_background: bool
    reduce_zero_label: bool = False   # label 0 ignored, the rest shifted down by one
    description: str = ""

    @property
    def pred_offset(self) -> int:
        return 0 if self.has_background else 1


DATASETS: dict[str, DatasetSpec] = {
    "voc21": DatasetSpec("voc21", 21, True, False, "PASCAL VOC 2012 val, 20 classes + background"),
    "voc20": DatasetSpec("voc20", 20, False, True, "PASCAL VOC 2012 val, background ignored"),
    "context60": DatasetSpec("context60", 60, True, False, "PASCAL-Context val, 59 + background"),
    "context59": DatasetSpec("context59", 59, False, True, "PASCAL-Context val, background ignored"),
    "coco_object": DatasetSpec("coco_object", 81, True, False,
                               "COCO-Stuff 164k val2017, the 80 things + background (stuff)"),
    "coco_stuff": DatasetSpec("coco_stuff", 171, False, False, "COCO-Stuff 164k val2017, 171 classes"),
    "cityscapes": DatasetSpec("cityscapes", 19, False, False, "Cityscapes val, 19 train ids"),
    "ade20k": DatasetSpec("ade20k", 150, False, True, "ADE20K SceneParsing val, 150 classes"),
}

# COCO-Stuff 164k raw label pngs (stuffthingmaps_trainval2017) hold the
# 0-based COCO category id: 0..90 things (11 of them unused), 91..181 stuff,
# 255 unlabeled. mmseg's coco_stuff164k conversion keeps the 171 used ids in
# order (_labelTrainIds.png); GroupViT's convert_coco_object.py, which the
# training-free papers use, numbers the 80 things 1..80 and makes every
# stuff id background 0 (_instanceTrainIds.png).
COCO_UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)


def coco_raw_lut(dataset: str) -> np.ndarray:
    """(256,) uint8: raw COCO-Stuff label value -> coco_stuff or coco_object index."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    used = [i for i in range(182) if i not in COCO_UNUSED_IDS]
    for new, old in enumerate(used):
        if dataset == "coco_stuff":
            lut[old] = new
        else:
            lut[old] = new + 1 if old <= 90 else 0
    return lut


@dataclass
class Split:
    """The samples of a split and how to read their labels."""

    spec: DatasetSpec
    samples: list[Sample]
    root: Path
    # COCO: labels not named *<converted_suffix> are raw pngs, mapped by raw_lut
    raw_lut: np.ndarray | None = None
    converted_suffix: str = ""

    def read_label(self, sample: Sample) -> np.ndarray:
        """(H, W) int64 class indices or 255; DatasetError for an unusable png."""
        raw = read_label_png(sample.label)
        lut = self.raw_lut
        if lut is not None and self.converted_suffix and sample.label.name.endswith(
                self.converted_suffix):
            lut = None
        return apply_label_rule(raw, self.spec.reduce_zero_label, lut)


def read_label_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                raise DatasetError(f"label {path} is a {im.mode} image; expected a single-channel "
                                   "png of class indices")
            return np.asarray(im).astype(np.int64)
    except (OSError, UnidentifiedImageError) as e:
        raise DatasetError(f"cannot read label {path}: {e}") from None


def apply_label_rule(raw: np.ndarray, reduce_zero_label: bool,
                     lut: np.ndarray | None = None) -> np.ndarray:
    """Raw label values -> class indices / 255 (mmseg's LoadAnnotations with
    ``reduce_zero_label``: 0 -> 255, v -> v - 1, 255 stays 255)."""
    label = raw.astype(np.int64)
    if lut is not None:
        if label.size and (label.min() < 0 or label.max() > 255):
            raise DatasetError("raw COCO-Stuff labels must be 8-bit")
        label = lut[label].astype(np.int64)
    if reduce_zero_label:
        label = np.where(label == 0, IGNORE_INDEX, np.where(label == IGNORE_INDEX, IGNORE_INDEX,
                                                            label - 1))
    return label


# ---------------------------------------------------------------- layouts


def _need(path: Path, what: str, dataset: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{dataset}: expected {what} at {path}")
    return path


def _resolve_root(root: Path, marker: str, parents: tuple[str, ...]) -> Path:
    """``root`` itself when it holds ``marker``, else the first of
    ``root/parent`` that does (VOCdevkit/VOC2012 given as VOCdevkit, ...)."""
    if (root / marker).exists():
        return root
    for p in parents:
        if (root / p / marker).exists():
            return root / p
    return root


def _split_list(root: Path, listing: str, images: str, labels: str, dataset: str,
                label_suffix: str = ".png") -> list[Sample]:
    list_file = _need(root / listing, "the split list", dataset)
    img_dir = _need(root / images, "the image folder", dataset)
    lbl_dir = _need(root / labels, "the label folder", dataset)
    ids = list_file.read_text().split()
    if not ids:
        raise DatasetError(f"{dataset}: split list {list_file} is empty")
    return [Sample(i, img_dir / f"{i}.jpg", lbl_dir / f"{i}{label_suffix}") for i in ids]


def load_split(dataset: str, root: str | Path) -> Split:
    """The validation split of ``dataset`` under ``root``; DatasetError names
    the first missing file or folder."""
    if dataset not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{dataset}: data root {root} is not a folder")
    lut, suffix = None, ""
    if dataset in ("voc21", "voc20"):
        root = _resolve_root(root, "ImageSets/Segmentation", ("VOC2012", "VOCdevkit/VOC2012"))
        samples = _split_list(root, "ImageSets/Segmentation/val.txt", "JPEGImages",
                              "SegmentationClass", dataset)
    elif dataset in ("context60", "context59"):
        root = _resolve_root(root, "ImageSets/SegmentationContext",
                             ("VOC2010", "VOCdevkit/VOC2010"))
        samples = _split_list(root, "ImageSets/SegmentationContext/val.txt", "JPEGImages",
                              "SegmentationClassContext", dataset)
    elif dataset in ("coco_object", "coco_stuff"):
        root = _resolve_root(root, "images/val2017", ("coco_stuff164k",))
        img_dir = _need(root / "images" / "val2017", "the val2017 image folder", dataset)
        lbl_dir = _need(root / "annotations" / "val2017", "the val2017 label folder", dataset)
        suffix = "_labelTrainIds.png" if dataset == "coco_stuff" else "_instanceTrainIds.png"
        samples = []
        for p in sorted(img_dir.glob("*.jpg")):
            converted = lbl_dir / f"{p.stem}{suffix}"
            samples.append(Sample(p.stem, p, converted if converted.exists()
                                  else lbl_dir / f"{p.stem}.png"))
        # A converted png (suffix) is read as it is; a raw <id>.png of the
        # COCO-Stuff download is converted on the fly.
        lut = coco_raw_lut(dataset)
    elif dataset == "cityscapes":
        root = _resolve_root(root, "leftImg8bit/val", ("cityscapes",))
        img_dir = _need(root / "leftImg8bit" / "val", "the leftImg8bit/val folder", dataset)
        gt_dir = _need(root / "gtFine" / "val", "the gtFine/val folder", dataset)
        samples = []
        for p in sorted(img_dir.glob("*/*_leftImg8bit.png")):
            stem = p.name[: -len("_leftImg8bit.png")]
            samples.append(Sample(f"{p.parent.name}/{stem}", p,
                                  gt_dir / p.parent.name / f"{stem}_gtFine_labelTrainIds.png"))
    else:  # ade20k
        root = _resolve_root(root, "images/validation", ("ADEChallengeData2016",))
        img_dir = _need(root / "images" / "validation", "the images/validation folder", dataset)
        lbl_dir = _need(root / "annotations" / "validation", "the annotations/validation folder",
                        dataset)
        samples = [Sample(p.stem, p, lbl_dir / f"{p.stem}.png")
                   for p in sorted(img_dir.glob("*.jpg"))]
    if not samples:
        raise DatasetError(f"{dataset}: no images found under {root}")
    _check_files(samples, dataset)
    return Split(spec, samples, root, lut, suffix)


def custom_spec(num_classes: int, has_background: bool, reduce_zero_label: bool) -> DatasetSpec:
    return DatasetSpec("custom", num_classes, has_background, reduce_zero_label,
                       "custom layout (--images / --labels)")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def load_custom(images: str | Path, labels: str | Path, spec: DatasetSpec,
                label_suffix: str = ".png") -> Split:
    """Every image of ``images`` (sorted, sub-folders included) with the
    label ``labels/<relative stem><label_suffix>``."""
    img_dir, lbl_dir = Path(images), Path(labels)
    for path, what in ((img_dir, "--images"), (lbl_dir, "--labels")):
        if not path.is_dir():
            raise DatasetError(f"custom: {what} folder {path} does not exist")
    samples = []
    for p in sorted(img_dir.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            rel = p.relative_to(img_dir).with_suffix("")
            samples.append(Sample(rel.as_posix(), p, lbl_dir / f"{rel.as_posix()}{label_suffix}"))
    if not samples:
        raise DatasetError(f"custom: no images in {img_dir}")
    _check_files(samples, "custom")
    return Split(spec, samples, img_dir)


def _check_files(samples: list[Sample], dataset: str) -> None:
    for s in samples:
        if not s.image.is_file():
            raise DatasetError(f"{dataset}: image of {s.id} expected at {s.image}")
        if not s.label.is_file():
            raise DatasetError(f"{dataset}: label of {s.id} expected at {s.label}")

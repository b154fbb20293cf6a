"""The prompt half of the segmenter (docs/algorithm.md 4, 5 and 8): image
features and a prepared prompt set -> labels, probabilities and per-class
statistics. Segmenter.segment is exactly ``decode(encode(images))``; a
query decodes a kept frame's features with other prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import CassConfig
from ..label_stats import device_label_statistics
from ..prepared_prompts import PreparedPrompts
from ..presence import adjust_text, class_presence, patch_logits, per_class_max, presence_similarity
from ..result import SegmentationResult
from ..temporal import StreamFrame
from ..timing import StageTimer
from .features import CropFeatures, ImageFeatures



def decode(features: ImageFeatures, prompts: PreparedPrompts, config: CassConfig,
           timer: StageTimer, return_probs: bool = False, output_size: str = "input",
           streams: Sequence[StreamFrame | None] | None = None) -> list[SegmentationResult]:
    """One result per image of ``features`` (``output_size`` as in
    Segmenter.segment; ``streams``: each image's temporal stream or None).
    Stages ``head`` and ``postprocess`` of ``timer``."""
    canvas, image_r = _accumulate(features, prompts, config, timer)
    with timer("postprocess"):
        return [_labels(_output_logits(canvas, features, i, output_size), image_r[i], prompts,
                        config, return_probs, streams[i] if streams is not None else None)
                for i in range(len(features))]


def logits_of_crops(grp: CropFeatures, prompts: PreparedPrompts, config: CassConfig
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """3.9 and 4 for one crop batch: patch logits (B, C, gh, gw) and the
    presence similarity r (B, C)."""
    r = presence_similarity(grp.g, prompts.text)  # (B, C)
    t = adjust_text(grp.patches, prompts.text, r, prompts.cluster_onehot,
                    config.mean_vector_weight)
    logits = patch_logits(grp.patches, t, r, config.global_semantics_weight)  # (B, N, C)
    return logits.transpose(1, 2).reshape(grp.patches.shape[0], -1, *grp.grid), r


def _accumulate(features: ImageFeatures, prompts: PreparedPrompts, config: CassConfig,
                timer: StageTimer) -> tuple[torch.Tensor, torch.Tensor]:
    """Every crop's logits averaged into the canvas (5.1, 5.2): canvas
    (C, sum HW) over names, and the reported presence similarity (I, C):
    each image's prior, or with the Cityscapes rule (4.1) the max over its
    crops' own priors."""
    # All resized images share one flat canvas; each crop's pixels are
    # summed in with one index_add, then divided by the coverage.
    offsets = features.offsets
    device = prompts.text.device
    n_names, n_pixels = len(prompts.names), int(offsets[-1])
    canvas = torch.zeros(n_names, n_pixels, device=device)
    coverage = torch.zeros(n_pixels, device=device)
    image_r = torch.full((len(features), n_names), float("-inf"), device=device)
    for grp in features.groups:
        with timer("head"):
            logits, r = logits_of_crops(grp, prompts, config)
        with timer("postprocess"):
            logits = F.interpolate(logits, size=grp.size, mode="bilinear", align_corners=False)
            index = _crop_index(grp, features.resized_sizes, offsets).to(device)
            canvas.index_add_(1, index, logits.permute(1, 0, 2, 3).reshape(logits.shape[1], -1))
            coverage.index_add_(0, index, torch.ones_like(index, dtype=coverage.dtype))
            owner = torch.tensor(grp.images, device=device)
            image_r.scatter_reduce_(0, owner[:, None].expand_as(r), r, reduce="amax")
    canvas /= coverage
    return canvas, image_r


def _crop_index(grp: CropFeatures, resized: Sequence[tuple[int, int]], offsets: np.ndarray
                ) -> torch.Tensor:
    """Flat canvas positions of every pixel of every crop: (B * ch * cw,)."""
    ch, cw = grp.size
    ys, xs = np.meshgrid(np.arange(ch), np.arange(cw), indexing="ij")
    starts = np.array([(box[0], box[2], resized[i][1], offsets[i])
                       for i, box in zip(grp.images, grp.boxes)])  # (B, 4): y0, x0, width, offset
    flat = (starts[:, 3, None, None] + (starts[:, 0, None, None] + ys) * starts[:, 2, None, None]
            + starts[:, 1, None, None] + xs)
    return torch.from_numpy(flat.reshape(-1))


def _output_logits(canvas: torch.Tensor, features: ImageFeatures, i: int, output_size: str
                   ) -> torch.Tensor:
    """Image ``i``'s logits (C, H, W) at the output size (5.3)."""
    hr, wr = features.resized_sizes[i]
    logits = canvas[:, features.offsets[i]:features.offsets[i + 1]].reshape(-1, hr, wr)
    size = features.input_sizes[i] if output_size == "input" else (hr, wr)
    if tuple(size) != tuple(logits.shape[-2:]):
        logits = F.interpolate(logits[None], size=tuple(size), mode="bilinear",
                               align_corners=False)[0]
    return logits


def _statistics(labels: torch.Tensor, own_prob: torch.Tensor, r: torch.Tensor,
                prompts: PreparedPrompts
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Counts, mean confidence, boxes and presence (K each) computed on
    the device and brought to the host in one copy."""
    k = prompts.num_labels
    counts, mean_conf, boxes = device_label_statistics(labels, own_prob, k)
    presence = class_presence(r[None], prompts.name_labels, k)[0]
    packed = torch.cat([counts.double(), mean_conf, boxes.double().reshape(-1),
                        presence.double()]).cpu().numpy()   # (7K,)
    return (packed[:k].astype(np.int64), packed[k:2 * k].astype(np.float32),
            packed[2 * k:6 * k].reshape(k, 4).astype(np.int64),
            packed[6 * k:].astype(np.float32))


def _labels(logits: torch.Tensor, r: torch.Tensor, prompts: PreparedPrompts,
            config: CassConfig, return_probs: bool, frame: StreamFrame | None = None
            ) -> SegmentationResult:
    """Logits over names (C, H, W) -> labels, probabilities, statistics
    (5.4), smoothed over time when ``frame`` says so (5.6)."""
    k = prompts.num_labels
    name_prob = torch.softmax(config.logit_scale * logits, 0)             # (C, H, W)
    class_prob = per_class_max(name_prob, prompts.name_labels, k, dim=0)  # (K, H, W)
    if frame is not None and not frame.stream.params.active:
        frame = None        # off: exactly the per-frame path
    if frame is not None:
        class_prob = frame.stream.smooth(class_prob, prompts.prompt_id, frame.stamp_s)
    best_prob, labels = class_prob.max(0)
    labels = labels.masked_fill(best_prob < config.prob_threshold, 0)
    own_prob = torch.gather(class_prob, 0, labels[None])[0]
    counts, mean_conf, boxes, presence = _statistics(labels, own_prob, r, prompts)
    # uint8 on the device: a quarter of the bytes to copy
    labels_np = (labels.to(torch.uint8).cpu().numpy() if k <= 256
                 else labels.to(torch.int32).cpu().numpy().astype(np.uint16))
    own_np = own_prob.cpu().numpy()
    present = frame.stream.present(counts, frame.min_pixels) if frame is not None else None
    return SegmentationResult(
        labels=labels_np, class_names=prompts.class_names, presence=presence,
        pixel_counts=counts, mean_confidence=mean_conf, boxes=boxes, prompt_id=prompts.prompt_id,
        probs=class_prob.cpu().numpy().astype(np.float32) if return_probs else None,
        present=present, confidence=own_np.astype(np.float32, copy=False))

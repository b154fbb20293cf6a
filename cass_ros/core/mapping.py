"""What mapping stacks take from a label image (docs/ros-interface.md,
"Outputs for mappers"): a binary mask of chosen classes (nvblox's mono8
convention) and the camera matrices of a camera scaled to the label image's
size (``output_size: model``). numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MASK_ON = 255       # nvblox: a mask pixel of a masked class is 255, the rest 0


def mask_label_ids(synonyms: Sequence[Sequence[str]], mask_classes: Sequence[str]
                   ) -> tuple[list[int], list[str]]:
    """Label values whose class has a name in ``mask_classes``, and the
    names that match no class. ``synonyms[k]`` are the names of label k
    (PromptSet.synonyms); label 0 (background) is never masked. Names match
    case-insensitively, any synonym of a class: ``person`` masks a class
    prompted as ``person|worker``, and so does ``worker``."""
    wanted = {n.strip().lower() for n in mask_classes if n.strip()}
    ids, found = [], set()
    for label, names in enumerate(synonyms):
        hits = wanted.intersection(n.strip().lower() for n in names)
        if label > 0 and hits:
            ids.append(label)
            found |= hits
    missing = [n for n in mask_classes if n.strip().lower() not in found]
    return ids, missing


def class_mask(labels: np.ndarray, label_ids: Sequence[int], num_labels: int) -> np.ndarray:
    """(H, W) uint8: MASK_ON where the label is one of ``label_ids``, else 0.
    One table look-up per pixel (no comparison per class)."""
    table = np.zeros(max(int(num_labels), int(labels.max(initial=0)) + 1), np.uint8)
    table[list(label_ids)] = MASK_ON
    return table[labels]


def scale_camera_matrices(k: Sequence[float], p: Sequence[float],
                          from_size: tuple[int, int], to_size: tuple[int, int]
                          ) -> tuple[list[float], list[float]]:
    """K (3 x 3, row-major) and P (3 x 4) of a camera whose image is resized
    from ``from_size`` to ``to_size`` ((height, width) each).

    The label image is resized as OpenCV resizes (pixel centres at + 0.5,
    docs/algorithm.md 2.1), so a point at pixel u maps to (u + 0.5) * s - 0.5:
    fx, fy and P's Tx, Ty scale by s, the principal point by that rule.
    (image_proc's resize scales cx by s alone, half a pixel times 1 - s off
    for OpenCV's resize.)"""
    sy = to_size[0] / from_size[0]
    sx = to_size[1] / from_size[1]
    scale = np.diag([sx, sy, 1.0])
    shift = np.array([[1.0, 0.0, 0.5 * (sx - 1.0)], [0.0, 1.0, 0.5 * (sy - 1.0)],
                      [0.0, 0.0, 1.0]])
    # pixel' = shift @ scale @ pixel (homogeneous), applied to both matrices
    m = shift @ scale
    k_new = m @ np.asarray(k, np.float64).reshape(3, 3)
    p_new = m @ np.asarray(p, np.float64).reshape(3, 4)
    return k_new.reshape(-1).tolist(), p_new.reshape(-1).tolist()


__all__ = ["MASK_ON", "mask_label_ids", "class_mask", "scale_camera_matrices"]

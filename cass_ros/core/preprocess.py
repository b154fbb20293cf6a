"""Image preparation (docs/algorithm.md section 2) and the sliding-window
grid (5.2). Resizes run on the 8-bit image as the reference's pipeline does:
OpenCV bilinear for the short-side resize, Pillow bicubic for DINO's square.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image

# CLIP's and ImageNet's normalisation (OpenAI CLIP; torchvision / DINO).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MAX_LONG_SIDE = 2048


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) after mmseg's keep-ratio resize to (2048, short_side): scale
    ``min(2048 / long, short_side / short)``, sides rounded half up."""
    scale = min(MAX_LONG_SIDE / max(height, width), short_side / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> uint8 resized with OpenCV bilinear (2.1)."""
    h, w = resized_size(image.shape[0], image.shape[1], short_side)
    if (h, w) == image.shape[:2]:
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def normalize(image: np.ndarray | torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
              ) -> torch.Tensor:
    """8-bit image -> float32 (3, H, W): x / 255, then (x - mean) / std.

    ``image``: a numpy (H, W, 3) array, or a torch (3, H, W) uint8 tensor on
    any device (normalised where it is)."""
    if isinstance(image, np.ndarray):
        # torch wants a writable array; PIL / OpenCV views may be read-only.
        array = image if image.flags.writeable and image.flags.c_contiguous else np.array(image)
        image = torch.from_numpy(array).permute(2, 0, 1)
    x = image.float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32, device=x.device)[:, None, None]
    return (x - m) / s


def dino_square(crop: np.ndarray) -> np.ndarray:
    """The 8-bit crop brought to S x S, S = min(H, W): unchanged when square,
    else Pillow's bicubic resize (its default filter, antialiased when
    shrinking), the reference's way (2.3)."""
    h, w = crop.shape[:2]
    if h == w:
        return crop
    s = min(h, w)
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((s, s), Image.Resampling.BICUBIC))


def dino_input(crop: np.ndarray, patch: int = 8) -> torch.Tensor:
    """DINO's input for one crop: square, ImageNet-normalised, cut to a
    multiple of the patch size. (3, S', S') float32."""
    x = normalize(dino_square(crop), IMAGENET_MEAN, IMAGENET_STD)
    s = (x.shape[-1] // patch) * patch
    return x[:, :s, :s]


def slide_windows(height: int, width: int, crop: int, stride: int
                  ) -> list[tuple[int, int, int, int]]:
    """mmseg's sliding-window grid: (y0, y1, x0, x1) per crop, row-major; the
    last crop of each row / column aligned to the border; crops never exceed
    the image (an image smaller than ``crop`` gives crops of its size)."""
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    out = []
    for r in range(rows):
        y1 = min(r * stride + crop, height)
        y0 = max(y1 - crop, 0)
        for c in range(cols):
            x1 = min(c * stride + crop, width)
            x0 = max(x1 - crop, 0)
            out.append((y0, y1, x0, x1))
    return out

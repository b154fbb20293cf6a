"""Per-label statistics of a label map on the device (docs/algorithm.md
5.4): pixel counts, mean own-label probability and tight boxes, so that a
frame's labels leave the device once, with a few numbers beside them,
instead of being summarised on the host (issue 8: no host work per pixel
on the per-frame path). result.label_statistics is the same computation in
numpy, for results built on the host and as the tests' reference.
"""

from __future__ import annotations

import torch


def device_label_statistics(labels: torch.Tensor, own_prob: torch.Tensor, num_labels: int
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """labels (H, W) int64 in [0, K); own_prob (H, W) float: each pixel's
    probability of its own label. Returns, on labels' device, counts (K,)
    int64, mean confidence (K,) float64 (0 where a label is absent) and
    boxes (K, 4) int64 x, y, width, height (zeros where absent)."""
    h, w = labels.shape
    flat = labels.reshape(-1)
    counts = torch.bincount(flat, minlength=num_labels)[:num_labels]
    # float64 sums: a label can cover a whole large frame
    sums = torch.bincount(flat, weights=own_prob.reshape(-1).double(),
                          minlength=num_labels)[:num_labels]
    mean_conf = sums / counts.clamp(min=1)
    xs = torch.arange(w, device=labels.device).repeat(h)              # (H*W,)
    ys = torch.arange(h, device=labels.device).repeat_interleave(w)   # (H*W,)

    def reduce(values: torch.Tensor, how: str, start: int) -> torch.Tensor:
        out = torch.full((num_labels,), start, dtype=torch.int64, device=labels.device)
        return out.scatter_reduce(0, flat, values, reduce=how)

    x0, x1 = reduce(xs, "amin", w), reduce(xs, "amax", -1)
    y0, y1 = reduce(ys, "amin", h), reduce(ys, "amax", -1)
    boxes = torch.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], 1)
    boxes = boxes.masked_fill((counts == 0)[:, None], 0)
    return counts, mean_conf, boxes

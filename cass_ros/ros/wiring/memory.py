"""Handing memory back when a managed node deactivates or cleans up
(docs/ros-interface.md, "Managed node").

PyTorch's CUDA caching allocator keeps freed blocks for reuse: without
``empty_cache`` the GPU memory of a deactivated node stays taken. On the
CPU, glibc keeps freed heap pages in its arenas: ``malloc_trim`` returns
them to the system, so the resident size really drops after a cleanup.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

from ...core.c_heap import malloc_trim


def release(device: Any | None, trim: bool) -> None:
    """Collect garbage and return cached memory: the CUDA cache when
    ``device`` (a torch.device or None) is a CUDA device, and with ``trim``
    the C heap's free pages (glibc only; elsewhere a no-op)."""
    gc.collect()
    if device is not None and getattr(device, "type", "") == "cuda":
        torch = sys.modules.get("torch")      # loaded: a CUDA device came from it
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
    if trim:
        malloc_trim()

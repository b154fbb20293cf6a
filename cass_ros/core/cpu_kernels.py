"""What runs differently on a CPU: the ViTs' fp32 linear layers through
oneDNN, and a C heap that keeps freed memory (``cpu_kernels``,
docs/ros-interface.md, Model).

Why oneDNN: torch's x86 wheels send fp32 ``F.linear`` to MKL, which on AMD
processors takes its AVX2 code path; oneDNN, bundled in the same wheels,
uses AVX-512 there. On the 2-core AMD EPYC build machine a (4710 x 768) by
(768 x 3072) product took 130 ms through ``F.linear`` and 63 ms through
oneDNN, both in fp32 (max |error| against float64: 1.4e-6 and 2.6e-6; only
the order of the sums differs). On Intel processors the two are close.

Why the heap: the ViTs' activations are tens of MB each. glibc serves
blocks that large with a fresh ``mmap`` and unmaps them on free, so every
block of every frame page-faults its memory in again; keeping freed memory
in the heap took 14 % off a sliding-window frame (c_heap.keep_freed_memory).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# y = x W^T + b, the signature of F.linear: what the trunks call for every
# linear layer (vit_blocks).
Linear = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """F.linear through oneDNN: x (..., in) -> (..., out), fp32 on the CPU.

    ``mkldnn._linear_pointwise`` is the op torch's own compiler emits for
    fused CPU linears; a 2-D input is its fast case (3-D inputs ran 40 %
    slower), so the leading dimensions are flattened."""
    lead = x.shape[:-1]
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), weight, bias,
                                           "none", [], "")
    return y.reshape(*lead, y.shape[-1])


@lru_cache(maxsize=1)
def onednn_available() -> bool:
    """Whether this torch has the oneDNN linear and it agrees with F.linear
    on a probe (checked once per process)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*s, generator=gen) for s in ((5, 3, 16), (8, 16), (8,)))
        with torch.no_grad():
            ok = torch.allclose(onednn_linear(x, w, b), F.linear(x, w, b), atol=1e-5, rtol=1e-5)
    except (RuntimeError, AttributeError, NotImplementedError) as err:
        log.warning("oneDNN linear unavailable (%s); the CPU uses torch's default kernels",
                    str(err).splitlines()[0])
        return False
    if not ok:
        log.warning("oneDNN linear disagrees with F.linear on a probe; the CPU uses torch's "
                    "default kernels")
    return ok


def select_linear(setting: str, device: torch.device, amp_dtype: torch.dtype | None,
                  compiled: bool) -> Linear:
    """The linear layer the trunks run: oneDNN for plain fp32 on the CPU
    with ``cpu_kernels: onednn``; F.linear everywhere else (CUDA, autocast,
    which oneDNN's op would bypass, and torch.compile, which picks its own
    kernels)."""
    if (setting == "onednn" and device.type == "cpu" and amp_dtype is None and not compiled
            and onednn_available()):
        return onednn_linear
    return F.linear

"""What runs differently on a CPU: the ViTs' fp32 linear layers through
oneDNN or torch's own kernels, and a C heap that keeps freed memory
(``cpu_kernels``, docs/ros-interface.md, Model).

Why a choice: torch's x86 wheels send fp32 ``F.linear`` to MKL, which on AMD
processors takes its AVX2 code path; oneDNN, bundled in the same wheels,
uses AVX-512 there. On the 2-core AMD EPYC build machine a (4710 x 768) by
(768 x 3072) product took 130 ms through ``F.linear`` and 63 ms through
oneDNN, both in fp32 (max |error| against float64: 1.4e-6 and 2.6e-6; only
the order of the sums differs). On a 2-core Intel Xeon (AVX-512, no AMX)
oneDNN was 10 to 15 % slower than ``F.linear`` instead (issue 25). So
``cpu_kernels: auto`` (the default) decides by measurement, not by vendor:
``choose_linear`` times both on the model's own linear shapes once per
process (``time_linears``) and takes the faster; ``onednn`` and ``torch``
force one.

Why the heap: the ViTs' activations are tens of MB each. glibc serves
blocks that large with a fresh ``mmap`` and unmaps them on free, so every
block of every frame page-faults its memory in again; keeping freed memory
in the heap took 14 % off a sliding-window frame (c_heap.keep_freed_memory).
That is the C library's behaviour, not the processor's: every setting but
``torch`` keeps freed memory on the CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


# (rows, in, out): one linear layer's shape, rows = batch x tokens.
LinearShape = tuple[int, int, int]
# Timing rounds per shape (both kernels in each): the best of them counts.
TIMING_REPEATS = 3
# oneDNN is taken only where it takes under this share of torch's time.
# Where it was chosen for (AMD, MKL on AVX2) it took half; within 10 %,
# about the noise of one timing on a shared 2-core machine, torch's own
# kernel is kept, so that a near tie does not flip from run to run.
ONEDNN_MARGIN = 0.9


@dataclass(frozen=True)
class LinearTimings:
    """What ``time_linears`` measured: ms per pass over the shapes (the sum
    of each shape's best of TIMING_REPEATS), per kernel; ``onednn_ms`` is
    None where oneDNN's linear is unavailable."""

    shapes: tuple[LinearShape, ...]
    torch_ms: float
    onednn_ms: float | None

    @property
    def choice(self) -> str:
        """The faster kernel set: ``onednn`` where it took under
        ONEDNN_MARGIN of torch's time, else ``torch``."""
        faster = self.onednn_ms is not None and self.onednn_ms < ONEDNN_MARGIN * self.torch_ms
        return "onednn" if faster else "torch"

    def describe(self) -> str:
        onednn = "unavailable" if self.onednn_ms is None else f"{self.onednn_ms:.1f} ms"
        rows = "+".join(str(r) for r in sorted({s[0] for s in self.shapes}))
        return (f"torch {self.torch_ms:.1f} ms, onednn {onednn} per pass over "
                f"{len(self.shapes)} linear shapes ({rows} rows)")


def _once_ms(fn: Linear, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float:
    t0 = time.perf_counter()
    fn(x, w, b)
    return (time.perf_counter() - t0) * 1000.0


@lru_cache(maxsize=16)
def time_linears(shapes: tuple[LinearShape, ...]) -> LinearTimings:
    """F.linear against oneDNN's linear on ``shapes`` (fp32, CPU), once per
    process and shape set: per shape a warm-up of each (oneDNN builds its
    primitive there), then TIMING_REPEATS rounds that run the two in turn,
    so that a burst of load from elsewhere hits both alike; each kernel's
    best round counts, summed over the shapes. Random inputs (timing does
    not depend on the values)."""
    gen = torch.Generator().manual_seed(0)
    kernels: list[Linear] = [F.linear] + ([onednn_linear] if onednn_available() else [])
    total = [0.0] * len(kernels)
    with torch.inference_mode():
        for rows, fan_in, fan_out in shapes:
            x = torch.randn(rows, fan_in, generator=gen)
            w = torch.randn(fan_out, fan_in, generator=gen)
            b = torch.randn(fan_out, generator=gen)
            for fn in kernels:
                fn(x, w, b)
            best = [min(ms) for ms in zip(*([_once_ms(fn, x, w, b) for fn in kernels]
                                            for _ in range(TIMING_REPEATS)))]
            total = [t + m for t, m in zip(total, best)]
    return LinearTimings(shapes, total[0], total[1] if len(total) > 1 else None)


def choose_linear(shapes: Sequence[LinearShape]) -> tuple[str, LinearTimings]:
    """``cpu_kernels: auto``: the faster of torch's and oneDNN's fp32 linear
    on ``shapes`` (time_linears, cached), logged once per shape set with
    its timings."""
    key = tuple(dict.fromkeys(tuple(int(v) for v in s) for s in shapes))
    cached = time_linears.cache_info().currsize
    timings = time_linears(key)
    if time_linears.cache_info().currsize > cached:
        log.info("cpu_kernels auto: %s; using %s", timings.describe(), timings.choice)
    return timings.choice, timings


def select_linear(setting: str, device: torch.device, amp_dtype: torch.dtype | None,
                  compiled: bool, shapes: Sequence[LinearShape] = ()) -> Linear:
    """The linear layer the trunks run: oneDNN for plain fp32 on the CPU
    with ``cpu_kernels: onednn``, or with ``auto`` where it measured faster
    on ``shapes`` (choose_linear); F.linear everywhere else (CUDA, autocast,
    which oneDNN's op would bypass, and torch.compile, which picks its own
    kernels)."""
    if device.type != "cpu" or amp_dtype is not None or compiled or setting == "torch":
        return F.linear
    if setting == "auto":
        setting = choose_linear(shapes)[0] if shapes else "torch"
    if setting == "onednn" and onednn_available():
        return onednn_linear
    return F.linear
